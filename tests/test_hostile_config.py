"""Hostile inputs, round two (issue 16), in configs: bad encodings, alias bombs, overrides of the wrong type.

Every problem is one ConfigError line naming the file or key, raised before any work (the run
folder is never created); every test runs under a time limit (tests/hostile.py).
"""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlr.cli import main
from rlr.config import MAX_CONFIG_BYTES, RunConfig, load_config
from rlr.errors import ConfigError
from tests.hostile import one_line, time_limit  # noqa: F401  (time_limit: autouse)

# Nine levels of nine aliases: 742 bytes that a YAML loader expands to 9^9 (387 M) strings.
_LEVELS = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)
]
ALIAS_BOMB = "train:\n  " + "\n  ".join(_LEVELS) + "\n"


def _refused(tmp_path: Path, capsys: pytest.CaptureFixture, *argv: str) -> str:
    """Run `rlr train` with `argv`; return its one error line after checking nothing was written."""
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "--data.root", str(tmp_path), *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlr: error: ") and "Traceback" not in captured.err, captured.err
    assert not run_dir.exists()
    return lines[0].removeprefix("rlr: error: ")


def test_config_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert _refused(tmp_path, capsys, "--config", str(config)) == (
        f"{config}: not a UTF-8 text file (byte 0xe9 at offset 9)"
    )


def test_alias_bomb_is_refused_with_bounded_memory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 800
    tracemalloc.start()
    try:
        message = _refused(tmp_path, capsys, "--config", str(config))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == f"{config}: YAML anchors and aliases (&, *) are not allowed in a config"
    assert peak < 20 * 2**20


@pytest.mark.parametrize("value", ["&x [1, 2]", "*x", "[&x 1, *x]"])
def test_anchors_and_aliases_in_an_override(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^override model.hidden_dims: YAML anchors and aliases"):
        load_config(None, [f"model.hidden_dims={value}"])


def test_deep_nesting_and_huge_configs(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.yaml: nested more than 32 levels deep$"):
        load_config(deep)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match=rf"huge.yaml: config too large \({MAX_CONFIG_BYTES + 3} bytes > "):
        load_config(huge)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_a_pipe_as_config_is_refused_without_blocking(tmp_path: Path) -> None:
    pipe = tmp_path / "config.yaml"
    os.mkfifo(pipe)
    with pytest.raises(ConfigError, match=r"config.yaml: config is not a regular file$"):
        load_config(pipe)


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("train.epochs", "abc", "train.epochs must be a whole number, got 'abc'"),
        ("train.epochs", "1.5", "train.epochs must be a whole number, got 1.5"),
        ("train.epochs", ".inf", "train.epochs must be a whole number, got inf"),
        ("train.lr", ".nan", "train.lr must be a finite number, got nan"),
        ("data.image_size", "-5", "data.image_size must lie in [32, 4096], got -5"),
        ("data.image_size", "100000", "data.image_size must lie in [32, 4096], got 100000"),
        ("model.num_heads", "0", "model.num_heads must be at least 1, got 0"),
        ("model.num_heads", "3", "model.hidden_dims: width 256 is not divisible by model.num_heads=3"),
        ("eval.batch_size", "0", "eval.batch_size must be at least 1, got 0"),
        ("backbone.out_indices", "[9, 10]", "backbone.out_indices must lie in [0, 4], got 9"),
        ("backbone.name", "nonexistent_net", "backbone.name 'nonexistent_net' is not a timm model"),
        ("train.device", "foo", "train.device 'foo' is not a device"),
        ("train.compile", "1", "train.compile must be true or false, got 1"),
        ("model.hidden_dims", "[a, b]", "model.hidden_dims[0] must be a whole number, got 'a'"),
        ("model.windows", "[4, 3]", "model.windows must be a positive odd number, got 4"),
        ("data.classes", "{a: 1}", "data.classes must be a list, got {'a': 1}"),
        ("train", "3", "train: expected a mapping, got int"),
    ],
)
def test_override_of_the_wrong_type_or_range(
    tmp_path: Path, capsys: pytest.CaptureFixture, key: str, value: str, problem: str
) -> None:
    assert _refused(tmp_path, capsys, f"--{key}", value).startswith(problem)


def test_documented_conversions() -> None:
    config = load_config(None, ["train.epochs=3.0", "name=2024", "train.lr=1"])
    assert (config.train.epochs, config.name, config.train.lr) == (3, "2024", 1.0)
    assert isinstance(config.train.epochs, int) and isinstance(config.train.lr, float)


_SCALARS = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=12)
)
_YAML = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_SECTIONS = [
    "name",
    "data",
    "backbone",
    "model",
    "train",
    "eval",
    "data.image_size",
    "train.epochs",
    "model.hidden_dims",
]
_FUZZ = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _loads_or_refuses(path: Path | None, overrides: list[str] = ()) -> None:
    try:
        assert isinstance(load_config(path, overrides), RunConfig)
    except ConfigError as error:
        assert one_line(str(error), "") and str(error), str(error)


@pytest.mark.slow
@_FUZZ
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_random_text_as_a_config(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        _loads_or_refuses(path)


@pytest.mark.slow
@_FUZZ
@given(document=st.dictionaries(st.sampled_from(_SECTIONS), _YAML, max_size=4))
def test_random_yaml_documents_and_overrides(document: dict) -> None:
    # YAML-shaped values at the config's real keys reach the type and range checks, not only the parser.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        flat = {k: v for k, v in document.items() if "." not in k}
        path.write_text(yaml.safe_dump(flat), encoding="utf-8")
        overrides = [
            f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in document.items() if "." in k
        ]
        _loads_or_refuses(path, overrides)
