"""The whole pipeline on the built-in demo data: train -> last.pt -> test -> tables, via library and CLI."""

import csv
import json
from pathlib import Path

import pytest
import torch

from rlr.api import evaluate
from rlr.cli import main
from rlr.config import load_config
from rlr.engine.train import train
from rlr.errors import RlrError
from rlr.metrics import METRIC_NAMES

from .conftest import TINY, realmini_class_config, tiny_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def trained_run(tiny_demo, feature_cache_dir, tmp_path_factory):
    config = tiny_config(tiny_demo, feature_cache_dir)
    run_dir = train(config, tmp_path_factory.mktemp("runs") / "tiny")
    return config, run_dir


def test_training_writes_a_complete_run(trained_run):
    config, run_dir = trained_run
    assert (run_dir / "config.yaml").is_file()
    assert load_config(run_dir / "config.yaml").to_dict() == config.to_dict()
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == config.train.epochs
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2]
    assert all(row["loss"] > 0 for row in log)
    assert not list(run_dir.glob(".*.tmp"))


def test_testing_writes_per_class_metrics_and_mean(trained_run, tiny_demo):
    _, run_dir = trained_run
    results = evaluate(run_dir)
    classes = sorted(p.name for p in tiny_demo.iterdir() if p.is_dir())
    assert sorted(results) == classes
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(metrics["per_class"]) == classes
    for row in list(metrics["per_class"].values()) + [metrics["mean"]]:
        for name in ("I-AUROC", "P-AUROC"):
            assert 0.0 <= row[name] <= 1.0
    assert metrics["protocol"]["checkpoint"] == "last epoch"
    rows = list(csv.reader((run_dir / "metrics.csv").open()))
    assert rows[0] == ["class", *METRIC_NAMES, "mAD"] and rows[-1][0] == "mean"
    table = (run_dir / "metrics.md").read_text()
    assert all(f"| {name} |" in table for name in classes + ["mean"])
    scores = list(csv.DictReader((run_dir / "scores.csv").open()))
    assert len(scores) == sum(len(r.records) for r in results.values())


@pytest.mark.slow
def test_demo_command_trains_a_model_that_finds_the_defects(tmp_path, monkeypatch, capsys):
    """`rlr demo` as README runs it (fewer epochs): the model must really detect and localise."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLR_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["demo", "--train.epochs", "4"]) == 0
    assert "mean" in capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    mean = json.loads((run_dir / "metrics.json").read_text())["mean"]
    assert mean["I-AUROC"] >= 0.8
    assert mean["P-AUROC"] >= 0.85


def test_training_refuses_to_overwrite_an_existing_run(trained_run):
    config, run_dir = trained_run
    with pytest.raises(RlrError, match="already holds a trained run"):
        train(config, run_dir)


def test_cli_train_and_test(tiny_demo, feature_cache_dir, tmp_path, capsys):
    run_dir = tmp_path / "cli_run"
    overrides = [arg for item in TINY for arg in ("--" + item.split("=")[0], item.split("=")[1])]
    code = main(
        [
            "train",
            "--config",
            str(CONFIGS / "rlr_cpu.yaml"),
            "--run-dir",
            str(run_dir),
            "--data.root",
            str(tiny_demo),
            f"--train.cache_dir={feature_cache_dir}",
            *overrides,
            "--train.epochs",
            "1",
        ]
    )
    assert code == 0 and (run_dir / "last.pt").is_file()
    assert main(["test", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "I-AUROC" in out and "P-AUROC" in out and "mean" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--data.root", "/nonexistent/data"], "/nonexistent/data"),
        (["train", "--train.epochz", "3"], "unknown config key train.epochz"),
        (["train", "--config", "missing.yaml"], "missing.yaml: config file not found"),
        (["test", "--run", "/nonexistent/run"], "/nonexistent/run/last.pt: checkpoint not found"),
        (["data", "check", "/nonexistent/data"], "/nonexistent/data"),
    ],
)
def test_cli_errors_are_one_line_with_nonzero_exit(argv, message, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    output = captured.err + captured.out
    assert code != 0
    assert message in output
    assert "Traceback" not in output


def test_malicious_checkpoint_is_refused(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    run_dir = tmp_path / "evil"
    run_dir.mkdir()
    torch.save({"format": 1, "model": Payload()}, run_dir / "last.pt")
    assert main(["test", "--run", str(run_dir)]) == 2
    captured = capsys.readouterr()
    assert "not a safe, readable checkpoint" in captured.err
    assert "code ran" not in captured.out


def _tiny_mvtec(root, broken: str | None = None):
    """One class, 3 train / 1 good / 1 defect image; `broken` names a file to corrupt."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, count in (("train/good", 3), ("test/good", 1), ("test/crack", 1)):
        (root / "part" / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                root / "part" / folder / f"{i:03d}.png"
            )
    (root / "part/ground_truth/crack").mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 255, dtype=np.uint8)).save(root / "part/ground_truth/crack/000_mask.png")
    if broken:
        path = root / "part" / broken
        path.write_bytes(path.read_bytes()[:60])
    return root


def test_cli_train_names_a_truncated_image_in_one_line(tmp_path, feature_cache_dir, capsys):
    root = _tiny_mvtec(tmp_path / "data", broken="train/good/001.png")
    code = main(
        [
            "train",
            "--data.root",
            str(root),
            "--run-dir",
            str(tmp_path / "run"),
            f"--train.cache_dir={feature_cache_dir}",
            *[f"--{item}" for item in TINY],
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [row for row in err.replace("\r", "\n").splitlines() if row.startswith("rlr: error:")]
    assert "train/good/001.png" in line and "truncated or corrupt" in line
    assert "Traceback" not in err


def test_cli_data_check_lists_problems_with_nonzero_exit(tmp_path, capsys):
    root = _tiny_mvtec(tmp_path / "data", broken="test/crack/000.png")
    (root / "part/train/good/notes.txt").write_text("not an image")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "test/crack/000.png" in out and "notes.txt" in out


@pytest.mark.slow
@pytest.mark.realmini
def test_realmini_class_trains_and_tests(realmini, feature_cache_dir, tmp_path):
    """Real images and masks go through the same pipeline (one small class, one epoch)."""
    config = realmini_class_config(realmini, feature_cache_dir)
    results = evaluate(train(config, tmp_path / "run"))
    (metrics,) = [r.metrics for r in results.values()]
    assert len(results["metal_plate"].records) == 27 + 71
    assert results["metal_plate"].masks.any()
    assert all(metrics[name] is not None for name in METRIC_NAMES)
