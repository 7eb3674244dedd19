"""`rlr ablate`: each study trains its variants once and writes its table as Markdown and JSON."""

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from rlr.ablate import (
    RECIPE,
    RECIPE_PLUS,
    config_hash,
    run_recipe,
    run_study,
    saved_activation_bytes,
    seeded_configs,
    study_variants,
    training_hash,
)
from rlr.cli import main
from rlr.config import EvalConfig, RunConfig, load_config
from rlr.errors import RlrError
from rlr.models.rlr import RLR

from .conftest import TINY

UNIAD_TINY = ("model.windows=[3]", "model.hidden_dims=[32]")


def _overrides(tiny_demo, feature_cache_dir, *extra):
    return (f"data.root={tiny_demo}", f"train.cache_dir={feature_cache_dir}", *TINY, *extra)


def test_studies_have_the_supplementary_variants():
    assert [v.label for v in study_variants("refs")] == ["K = 1", "K = 2", "K = 3"]
    assert len(study_variants("fusion")) == 2 and [v.preset for v in study_variants("methods")] == [
        "rlr_cpu",
        "uniad_cpu",
    ]
    with pytest.raises(RlrError, match="unknown study 'x'"):
        study_variants("x")


@pytest.mark.slow
def test_fusion_then_refs_share_the_baseline_run_and_resume(tiny_demo, feature_cache_dir, tmp_path):
    out = tmp_path / "study"
    logs: list[str] = []
    fusion = run_study("fusion", out, overrides=_overrides(tiny_demo, feature_cache_dir), log=logs.append)
    assert [r["variant"] for r in fusion["rows"]] == ["alpha-fusion (alpha = 2)", "theta-fusion (learned)"]
    for row in fusion["rows"]:
        assert 0.0 <= row["mean"]["I-AUROC"] <= 1.0 and set(row["per_class"]) == {"brick", "grass", "gravel", "tissue"}
    theta_row = fusion["rows"][1]
    assert any(key.endswith("theta_mlka") for key in theta_row["learned"])
    markdown = (out / "fusion.md").read_text()
    assert "| alpha-fusion (alpha = 2) |" in markdown and "theta1 weighs MLKA" in markdown
    assert json.loads((out / "fusion.json").read_text())["study"] == "fusion"

    refs = run_study("refs", out, overrides=_overrides(tiny_demo, feature_cache_dir), log=logs.append)
    assert refs["rows"][0]["run"] == fusion["rows"][0]["run"]  # K = 1 is the alpha run, trained once
    assert sum("training" in line for line in logs) == 4  # alpha, theta, K = 2, K = 3
    params = [r["costs"]["parameters"] for r in refs["rows"]]
    memory = [r["costs"]["activation_mib"] for r in refs["rows"]]
    assert params[0] < params[1] < params[2] and memory[0] < memory[1] < memory[2]

    logs.clear()
    run_study("refs", out, overrides=_overrides(tiny_demo, feature_cache_dir), log=logs.append)
    assert all("reused" in line for line in logs) and len(logs) == 3


@pytest.mark.slow
def test_an_interrupted_variant_is_resumed(tiny_demo, feature_cache_dir, tmp_path, monkeypatch):
    import rlr.engine.train as engine_train

    out = tmp_path / "study"
    real_save = engine_train.save_epoch

    def save_then_stop(run_dir, state):
        real_save(run_dir, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_train, "save_epoch", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_study("fusion", out, overrides=_overrides(tiny_demo, feature_cache_dir), log=lambda line: None)
    monkeypatch.setattr(engine_train, "save_epoch", real_save)
    logs: list[str] = []
    result = run_study("fusion", out, overrides=_overrides(tiny_demo, feature_cache_dir), log=logs.append)
    assert logs[0].endswith("resuming after epoch 1") and logs[1].endswith("training")
    history = [
        json.loads(line) for line in (out / "runs").glob("alpha-*/train_log.jsonl").__next__().read_text().splitlines()
    ]
    assert [r["epoch"] for r in history] == [1, 2]
    assert len(result["rows"]) == 2


@pytest.mark.slow
def test_methods_study_from_the_command_line(tiny_demo, feature_cache_dir, tmp_path, capsys):
    from rlr.config import save_config
    from rlr.presets import cpu_config, preset_config

    cache = f"train.cache_dir={feature_cache_dir}"
    save_config(cpu_config((cache, *TINY)), tmp_path / "rlr.yaml")
    uniad = preset_config("uniad_cpu", (cache, "data.image_size=128", "train.epochs=2", *UNIAD_TINY))
    save_config(uniad, tmp_path / "uniad.yaml")
    out = tmp_path / "methods"
    args = ["ablate", "--study", "methods", "--data", str(tiny_demo), "--out", str(out)]
    code = main([*args, "--rlr-config", str(tmp_path / "rlr.yaml"), "--uniad-config", str(tmp_path / "uniad.yaml")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| RLR |" in printed and "| UniAD |" in printed
    rows = json.loads((out / "methods.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["RLR", "UniAD"]
    assert "uniad-" in rows[1]["run"] and rows[0]["costs"]["parameters"] != rows[1]["costs"]["parameters"]


def test_saved_activation_bytes_grow_with_batch():
    model = RLR([8], [(8, 8)], [16], num_layers=1, num_heads=2, windows=[3])
    import torch

    small = saved_activation_bytes(model, [torch.randn(1, 8, 8, 8)])
    large = saved_activation_bytes(model, [torch.randn(4, 8, 8, 8)])
    assert 0 < small < large


PIXEL_METRICS = ("P-AUROC", "P-AP", "P-F1max", "AUPRO")


def _scores(folder: Path) -> list[float]:
    with open(folder / "scores.csv", newline="") as handle:
        return [float(row["score"]) for row in csv.DictReader(handle)]


def test_run_hashes_ignore_later_settings_at_their_default_and_recipe_runs_ignore_eval():
    # the hash a default config had before the recipe settings existed: the studies' runs keep their folders
    assert config_hash(RunConfig()) == "4664326c"
    top1 = replace(RunConfig(), eval=EvalConfig(image_score_top_percent=1.0))
    assert config_hash(top1) != config_hash(RunConfig()) and training_hash(top1) == training_hash(RunConfig())
    dropout = RunConfig()
    dropout.model.input_dropout = 0.2
    assert training_hash(dropout) != training_hash(RunConfig())


@pytest.mark.slow
def test_recipe_eval_variant_tests_the_paper_run_again_and_a_rerun_reuses_both(tiny_demo, feature_cache_dir, tmp_path):
    out = tmp_path / "recipe"
    overrides = _overrides(tiny_demo, feature_cache_dir, "train.epochs=1")
    logs: list[str] = []
    result = run_recipe(out, overrides=overrides, slugs=["top1", "paper"], log=logs.append)
    assert sum("training" in line for line in logs) == 1 and len(list((out / "runs").iterdir())) == 1
    paper, top1 = result["rows"]  # table order, whatever the order asked for
    assert (paper["slug"], top1["slug"]) == ("paper", "top1")
    assert result["not_run"] == [v.slug for v in RECIPE[2:]]
    run = Path(paper["per_seed"][0]["run"])
    again = Path(top1["per_seed"][0]["results"])
    assert top1["per_seed"][0]["run"] == str(run) and again.parent == out / "evals"

    own, other = (json.loads((folder / "metrics.json").read_text()) for folder in (run, again))
    assert own["protocol"]["image_score"].startswith("max of the map")  # the run keeps its own scoring
    assert "top 1 %" in other["protocol"]["image_score"]
    for name, row in own["per_class"].items():
        assert {m: row[m] for m in PIXEL_METRICS} == {m: other["per_class"][name][m] for m in PIXEL_METRICS}
    # the mean of the top 1 % of a smoothed map is at most its maximum, and here below it
    paper_scores, top1_scores = _scores(run), _scores(again)
    assert all(t <= p for t, p in zip(top1_scores, paper_scores)) and top1_scores != paper_scores
    assert top1["mean"]["P-AUROC"] == paper["mean"]["P-AUROC"] and set(top1["mean"]) == {*own["mean"]}

    epochs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert paper["train_seconds"] == top1["train_seconds"] == sum(e["seconds"] for e in epochs)
    markdown = (out / "recipe.md").read_text()
    assert (
        "| variant | seeds | I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | AUPRO | mAD | train s |" in markdown
    )
    assert "| paper recipe | 0 |" in markdown and f"Not run yet: {', '.join(result['not_run'])}." in markdown
    assert "feature extraction excluded" in markdown and json.loads((out / "recipe.json").read_text()) == result

    trained_at = (run / "last.pt").stat().st_mtime_ns
    logs.clear()
    assert run_recipe(out, overrides=overrides, slugs=["paper", "top1"], log=logs.append) == result
    assert logs == [f"{run.name}: done earlier, reused", f"{again.name}: tested earlier, reused"]
    assert (run / "last.pt").stat().st_mtime_ns == trained_at


@pytest.mark.slow
def test_recipe_over_two_seeds_from_the_command_line_shows_the_spread(tiny_demo, feature_cache_dir, tmp_path, capsys):
    out = tmp_path / "recipe"
    tiny = [f"--{item}" for item in (*TINY, f"train.cache_dir={feature_cache_dir}", "train.epochs=1")]
    args = ["ablate", "--study", "recipe", "--data", str(tiny_demo), "--out", str(out), "--seeds", "0", "1"]
    assert main([*args, "--variants", "paper,top1", *tiny]) == 0
    printed = capsys.readouterr().out
    assert sum("training" in line for line in printed.splitlines()) == 2
    paper, top1 = json.loads((out / "recipe.json").read_text())["rows"]
    assert paper["seeds"] == top1["seeds"] == [0, 1]
    runs = [m["run"] for m in paper["per_seed"]]
    assert len(set(runs)) == 2 and [m["run"] for m in top1["per_seed"]] == runs
    assert len(list((out / "runs").iterdir())) == 2 and len(list((out / "evals").iterdir())) == 2
    seconds = [m["train_seconds"] for m in paper["per_seed"]]
    assert paper["range"]["train_seconds"] == [min(seconds), max(seconds)]
    assert paper["mean"]["I-AUROC"] == pytest.approx(sum(m["mean"]["I-AUROC"] for m in paper["per_seed"]) / 2)
    row = next(line for line in printed.splitlines() if line.startswith("| paper recipe |"))
    assert row.startswith("| paper recipe | 0, 1 |") and re.search(r"\| \d+\.\d \(\d+\.\d-\d+\.\d\) \|", row)


def test_recipe_refuses_an_unknown_variant_in_one_line(tmp_path, capsys):
    message = "unknown variant 'nope' (known: " + ", ".join(v.slug for v in RECIPE) + ")"
    with pytest.raises(RlrError, match=f"^{re.escape(message)}$"):
        run_recipe(tmp_path / "x", slugs=["paper", "nope"])
    assert not (tmp_path / "x").exists()
    assert main(["ablate", "--study", "recipe", "--data", str(tmp_path), "--variants", "paper,nope"]) == 2
    assert main(["ablate", "--study", "fusion", "--data", str(tmp_path), "--seeds", "1"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith("rlr: error: unknown variant 'nope'") and errors[1].endswith("belong to --study recipe")
    assert len(errors) == 2


def test_every_cosine_loss_variant_is_scored_with_the_cosine_map() -> None:
    """A model trained on the cosine loss alone leaves feature length free, so the MSE part of the paper's map is
    noise (47 I-AUROC on realmini): each such recipe variant must score with the cosine map."""
    cosine_trained = [v for v in RECIPE if "train.loss=cosine" in v.overrides]
    assert cosine_trained
    for variant in cosine_trained:
        assert "eval.map_score=cosine" in variant.overrides, variant.slug


@pytest.mark.parametrize(
    "paper, plus", [("rlr_realmini_cpu.yaml", "rlr_plus_cpu.yaml"), ("rlr_mvtec.yaml", "rlr_plus_mvtec.yaml")]
)
def test_the_plus_presets_are_the_recipe_studys_combination(paper: str, plus: str) -> None:
    """The plus presets are what the recipe study's `plus` row measures: the paper config with RECIPE_PLUS
    applied, equal in every setting but the name, so the table, the benchmark and the paper-scale sibling agree."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    combined = load_config(configs / paper, RECIPE_PLUS).to_dict()
    preset = load_config(configs / plus).to_dict()
    assert {**combined, "name": ""} == {**preset, "name": ""}
    assert next(v for v in RECIPE if v.slug == "plus").overrides == RECIPE_PLUS


def test_a_user_override_of_a_variants_key_does_not_undo_the_variant() -> None:
    """Every row gets the user's overrides, but the variant's own change is applied last: batch 8 for all
    rows must leave the batch-4 row at 4 (otherwise it would silently repeat the paper row)."""
    batch4 = next(v for v in RECIPE if v.slug == "batch4")
    paper = next(v for v in RECIPE if v.slug == "paper")
    user = ("train.batch_size=8", "train.epochs=3")
    (varied,), (base,) = (seeded_configs(v, None, user, None) for v in (batch4, paper))
    assert (varied.train.batch_size, base.train.batch_size) == (4, 8)
    assert varied.train.epochs == base.train.epochs == 3
