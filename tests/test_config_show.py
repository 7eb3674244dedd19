"""`rlr config show`: the resolved config, every key with its meaning, loadable as a config file."""

import dataclasses

import pytest
import yaml

from rlr.cli import build_parser, main
from rlr.config import DESCRIPTIONS, RunConfig, load_config
from rlr.models import list_models, model_spec


def _keys() -> set[str]:
    """Every key outside the model section."""
    keys = set()
    for section in dataclasses.fields(RunConfig):
        if section.name == "model":
            continue
        if section.name in ("data", "backbone", "train", "eval"):
            value = getattr(RunConfig(), section.name)
            keys |= {f"{section.name}.{f.name}" for f in dataclasses.fields(value)}
        else:
            keys.add(section.name)
    return keys


def test_every_key_of_every_section_and_model_has_a_meaning():
    assert set(DESCRIPTIONS) == _keys()
    for name in list_models():
        config = model_spec(name).config
        own = {f.name for f in dataclasses.fields(config)} - {"name"}
        assert set(config.descriptions) == own, name


def test_show_prints_the_resolved_config_with_meanings(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n")
    assert (
        main(
            [
                "config",
                "show",
                "--config",
                str(path),
                "--train.lr",
                "1e-3",
                "--model.name=uniad",
                "--backbone.merge",
                "true",
                "--backbone.smoothing",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "  epochs: 7  # training epochs" in out
    assert "  lr: 0.001  # learning rate" in out
    assert "  neighbourhood: 7  # n x n neighbourhood" in out and "num_references" not in out
    (tmp_path / "shown.yaml").write_text(out)
    assert load_config(tmp_path / "shown.yaml") == load_config(
        path, ["train.lr=1e-3", "model.name=uniad", "backbone.merge=true", "backbone.smoothing=1"]
    )


def test_show_without_config_is_what_train_would_use(capsys):
    assert main(["config", "show", "--train.device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# no --config: the small CPU recipe")
    assert yaml.safe_load(out)["name"] == "rlr_cpu"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["config", "show", "--train.epochs", "abc"], "train.epochs must be a whole number, got 'abc'"),
        (["config", "show", "--train.nope", "1"], "unknown config key train.nope"),
    ],
)
def test_show_refuses_bad_values_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rlr: error: {message}") and err.count("\n") == 1


def test_train_help_says_where_the_keys_are():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert "rlr config show" in train.format_help()
