"""The Python API: README's example as written, overrides checked as the CLI's are, the CLI going
through the same functions, a light `import rlr` and no import cycle behind its lazy names."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import rlr
import rlr.api
from rlr.cli import main
from rlr.config import RunConfig
from rlr.deploy.model import Model
from rlr.errors import ConfigError
from rlr.presets import cpu_config

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src" / "rlr"


def _readme_example() -> str:
    """The Python block of README's "Python API" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def readme_run(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """README's example, run as written on the tiny demo set: only its paths and epoch count replaced."""
    code = _readme_example()
    image = sorted(tiny_demo.glob("brick/test/*/*.png"))[-1]
    for placeholder, value in (
        ('"/data/mvtec_ad"', repr(str(tiny_demo))),
        ('"train.epochs": 10', '"train.epochs": 1'),
        ('"/data/line/part_0001.png"', repr(str(image))),
    ):
        assert code.count(placeholder) == 1, f"README's example no longer holds {placeholder}"
        code = code.replace(placeholder, value)
    work = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.setenv("RLR_CACHE_DIR", str(work / "cache"))
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
    namespace["work"] = work
    return namespace


def test_the_readme_example_trains_tests_and_scores(readme_run):
    run, evaluation, model, result = (readme_run[k] for k in ("run", "evaluation", "model", "result"))
    assert isinstance(run, rlr.Run) and run.path == Path("runs") / "rlr_cpu"
    assert run.config.train.epochs == 1 and run.config.name == "rlr_cpu"
    run_dir = readme_run["work"] / run.path
    written = json.loads((run_dir / "metrics.json").read_text())
    assert evaluation.per_class == written["per_class"] and evaluation.mean == written["mean"]
    assert sorted(evaluation.per_class) == ["brick", "grass", "gravel", "tissue"]
    assert (run_dir / "report.html").is_file() and (run_dir / "failures.md").is_file()
    assert isinstance(model, Model) and model.class_names == ["brick", "grass", "gravel", "tissue"]
    assert math.isfinite(result.score) and result.map.shape == (256, 256)


def test_overrides_are_checked_by_the_cli_validator_naming_the_key(tiny_demo, tmp_path):
    with pytest.raises(ConfigError, match=r"^unknown config key train\.epochz \(known: "):
        rlr.train("rlr_cpu", data=tiny_demo, overrides={"train.epochz": 1}, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"^train\.epochs must be a whole number, got 'many'$"):
        rlr.api.config_for("rlr_cpu", overrides={"train.epochs": "many"})
    with pytest.raises(ConfigError, match="^data.root given twice"):
        rlr.api.config_for("rlr_cpu", data=tiny_demo, overrides={"data.root": tiny_demo})
    with pytest.raises(ConfigError, match="^override key 'train.epochs=2' must be a dotted name"):
        rlr.api.config_for("rlr_cpu", overrides={"train.epochs=2": 1})
    with pytest.raises(ConfigError, match="^override train.epochs: a object is not a config value"):
        rlr.api.config_for("rlr_cpu", overrides={"train.epochs": object()})


def test_python_values_arrive_as_themselves(tmp_path):
    values = {"model.windows": [5, 3], "train.lr": 1e-3, "backbone.weights_file": None, "name": "yes"}
    config, chosen = rlr.api.config_for("rlr_cpu", data=tmp_path / "a: b", overrides=values)
    assert chosen is None
    assert config.data.root == str(tmp_path / "a: b") and config.model.windows == [5, 3]
    assert config.train.lr == 1e-3 and config.backbone.weights_file is None and config.name == "yes"  # not True


def test_every_kind_of_config_source(tmp_path):
    given = cpu_config(("train.epochs=7",))
    config, _ = rlr.api.config_for(given, overrides={"train.batch_size": 2})
    assert (config.train.epochs, config.train.batch_size, config.model.hidden_dims) == (7, 2, [64, 128])
    assert rlr.api.config_for("uniad_cpu")[0].model.name == "uniad"
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 3\n")
    config, _ = rlr.api.config_for(path, data="/data/x")
    assert (config.train.epochs, config.data.root) == (3, "/data/x")
    config, chosen = rlr.api.config_for(None, overrides={"train.device": "cpu"})
    assert chosen.startswith("no --config: the small CPU recipe") and config.name == "rlr_cpu"


def test_rlr_train_goes_through_the_python_api(tiny_demo, tmp_path, monkeypatch, capsys):
    calls = []

    def recorded(config, data=None, *, overrides=None, run_dir=None, overwrite=False):
        calls.append((config, run_dir, overwrite))
        return rlr.Run(Path(run_dir), config)

    monkeypatch.setattr(rlr.api, "train", recorded)
    argv = ["train", "--config", "rlr_cpu", "--data.root", str(tiny_demo), "--train.epochs", "3"]
    assert main([*argv, "--run-dir", str(tmp_path / "run"), "--overwrite"]) == 0
    ((config, run_dir, overwrite),) = calls
    assert isinstance(config, RunConfig) and config.train.epochs == 3 and config.data.root == str(tiny_demo)
    assert (run_dir, overwrite) == (tmp_path / "run", True)
    assert capsys.readouterr().out == f"trained: {tmp_path / 'run'}/last.pt\n"


def test_rlr_test_goes_through_the_python_api(readme_run, monkeypatch, capsys):
    tested = []
    real = rlr.api.test
    monkeypatch.setattr(rlr.api, "test", lambda run, device=None: tested.append(Path(run)) or real(run, device))
    run_dir = readme_run["work"] / readme_run["run"].path
    assert main(["test", str(run_dir), "--device", "cpu"]) == 0
    assert tested == [run_dir] and "mAD" in capsys.readouterr().out
    assert isinstance(rlr.Run(run_dir, readme_run["run"].config).load("cpu"), Model)


def test_import_rlr_stays_light():
    code = "import sys, rlr; print(sorted(m for m in ('torch', 'numpy', 'rlr.api') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _imports(path: Path, names: set[str]) -> set[str]:
    """The rlr modules a file imports anywhere in it (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name if a.name in names else a.name.rpartition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module for a in node.names
            }
    return found & names


def test_no_module_imports_one_that_imports_it_back():
    """Not even through lazy imports or longer chains: `rlr.train` must not lead back to the package root."""
    files = {
        ".".join(p.relative_to(SOURCE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in SOURCE.rglob("*.py")
    }
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = sorted(name for name in graph if name in reaches(name))
    assert cycles == []
    assert "rlr.api" in graph["rlr"]  # the check sees the root's lazy import
