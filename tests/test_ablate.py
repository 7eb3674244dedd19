"""`rlr ablate`: each study trains its variants once and writes its table as Markdown and JSON."""

import json

import pytest

from rlr.ablate import config_hash, run_study, saved_activation_bytes, study_variants
from rlr.cli import main
from rlr.errors import RlrError
from rlr.models.rlr import RLR

from .conftest import TINY

UNIAD_TINY = ("model.windows=[3]", "model.hidden_dims=[32]")


def _overrides(tiny_demo, feature_cache_dir, *extra):
    return (f"data.root={tiny_demo}", f"train.cache_dir={feature_cache_dir}", *TINY, *extra)


def test_studies_have_the_supplementary_variants():
    assert [v.label for v in study_variants("refs")] == ["K = 1", "K = 2", "K = 3"]
    assert len(study_variants("fusion")) == 2 and [v.preset for v in study_variants("methods")] == ["rlr_cpu", "uniad_cpu"]
    with pytest.raises(RlrError, match="unknown study 'x'"):
        study_variants("x")


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


def test_an_interrupted_variant_is_resumed(tiny_demo, feature_cache_dir, tmp_path, monkeypatch):
    import rlr.engine.train as engine_train

    out = tmp_path / "study"
    real_save = engine_train._save

    def save_then_stop(run_dir, state):
        real_save(run_dir, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_train, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_study("fusion", out, overrides=_overrides(tiny_demo, feature_cache_dir), log=lambda line: None)
    monkeypatch.setattr(engine_train, "_save", real_save)
    logs: list[str] = []
    result = run_study("fusion", out, overrides=_overrides(tiny_demo, feature_cache_dir), log=logs.append)
    assert logs[0].endswith("resuming after epoch 1") and logs[1].endswith("training")
    history = [json.loads(line) for line in (out / "runs").glob("alpha-*/train_log.jsonl").__next__().read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert len(result["rows"]) == 2


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
