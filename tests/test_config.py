"""Configs: YAML files, dotted overrides, clear errors, and the packaged CPU preset."""

from pathlib import Path

import pytest

from rlr.config import load_config, save_config
from rlr.errors import ConfigError
from rlr.presets import cpu_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_paper_config_has_the_paper_settings():
    config = load_config(CONFIGS / "rlr_mvtec.yaml")
    assert config.backbone.name == "tf_efficientnet_b6.aa_in1k"
    assert config.backbone.out_indices == [2, 3]
    assert config.data.image_size == 256
    assert config.model.hidden_dims == [256, 512]
    assert (config.model.num_layers, config.model.num_heads) == (4, 8)
    assert config.train.jitter_scale == 4.0
    assert (config.train.lr, config.train.batch_size, config.train.epochs) == (1e-4, 4, 200)


def test_cpu_yaml_equals_the_packaged_preset():
    from_file = load_config(CONFIGS / "rlr_cpu.yaml")
    assert from_file.to_dict() == cpu_config().to_dict()


def test_overrides_are_parsed_as_yaml_values():
    config = load_config(None, ["train.epochs=3", "model.windows=[5, 3]", "backbone.weights_file=null"])
    assert config.train.epochs == 3 and config.model.windows == [5, 3]
    assert config.backbone.weights_file is None


def test_round_trip_through_yaml(tmp_path):
    config = load_config(None, ["name=x", "train.seed=7"])
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochz=3", "unknown config key train.epochz"),
        ("model.hidden_dims=[64]", "hidden_dims has 1 entries"),
        ("data.format=zip", "unknown data.format"),
        ("train.epochs=0", "train.epochs must be at least 1"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_overrides_give_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nothere.yaml: config file not found"):
        load_config(tmp_path / "nothere.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
