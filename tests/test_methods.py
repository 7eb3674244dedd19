"""UniAD beside RLR in one pipeline: chosen by config, merged features, its own loss and scoring."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rlr.api import evaluate
from rlr.config import load_config
from rlr.deploy.model import load
from rlr.engine.build import build_model, scoring_rule
from rlr.engine.step import learning_rate
from rlr.engine.train import train
from rlr.errors import ConfigError
from rlr.features.backbone import FeatureExtractor
from rlr.features.weights import PACKAGED_LITE0
from rlr.models.rlr import RLR
from rlr.models.uniad import UniAD
from rlr.presets import preset_config
from rlr.scoring import ScoringRule, level_score, mean_pool_scores

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
UNIAD_TINY = (
    "data.image_size=128",
    "model.neighbourhood=3",
    "model.hidden_dims=[32]",
    "model.num_layers=1",
    "model.num_heads=2",
    "train.epochs=2",
)


def uniad_tiny(demo_root: Path, cache_dir: Path, *extra: str):
    return preset_config("uniad_cpu", (f"data.root={demo_root}", f"train.cache_dir={cache_dir}", *UNIAD_TINY, *extra))


def test_uniad_yaml_equals_the_packaged_preset():
    assert load_config(CONFIGS / "uniad_cpu.yaml").to_dict() == preset_config("uniad_cpu").to_dict()


def test_realmini_uniad_is_the_cpu_preset_at_the_benchmarks_budget():
    """The methods study's UniAD differs from the small preset only in what the realmini RLR also sets."""
    realmini, preset = load_config(CONFIGS / "uniad_realmini_cpu.yaml"), preset_config("uniad_cpu")
    rlr_realmini = load_config(CONFIGS / "rlr_realmini_cpu.yaml")
    assert (realmini.train.epochs, realmini.train.batch_size) == (
        rlr_realmini.train.epochs,
        rlr_realmini.train.batch_size,
    )
    assert realmini.data.format == rlr_realmini.data.format
    same = {**realmini.to_dict(), "name": preset.name}
    same["train"] = {**same["train"], "epochs": preset.train.epochs}
    same["data"] = {**same["data"], "format": preset.data.format}
    assert same == preset.to_dict()


def test_paper_uniad_config_has_the_release_settings():
    config = load_config(CONFIGS / "uniad_mvtec.yaml")
    assert (config.model.name, config.backbone.merge, config.backbone.out_indices) == ("uniad", True, [0, 1, 2, 3])
    assert (config.model.hidden_dims, config.model.num_layers, config.model.num_heads) == ([256], 4, 8)
    assert (config.train.optimizer, config.train.jitter_scale, config.train.grad_clip) == ("adamw", 20, 0.1)
    # one step per epoch: step 799 is the last of epoch 800, step 800 the first of epoch 801
    assert learning_rate(config, 799, 1) == pytest.approx(1e-4) and learning_rate(config, 800, 1) == pytest.approx(1e-5)
    rule = scoring_rule(config)
    assert (rule.map_score, rule.image_score, rule.image_score_pool) == ("l2", "mean_pool_max", 16)


def test_model_is_chosen_by_config():
    rlr = build_model(preset_config("rlr_cpu"), [40, 112], [(32, 32), (16, 16)])
    uniad = build_model(preset_config("uniad_cpu"), [192], [(16, 16)])
    assert isinstance(rlr, RLR) and isinstance(uniad, UniAD)
    assert scoring_rule(preset_config("rlr_cpu")) == ScoringRule("mse_cos", "gaussian_max")
    assert scoring_rule(preset_config("uniad_cpu")).map_score == "l2"
    # the user may still pick another rule explicitly
    assert scoring_rule(preset_config("uniad_cpu", ("eval.image_score=gaussian_max",))).image_score == "gaussian_max"


def test_uniad_needs_merged_features():
    with pytest.raises(ConfigError, match="backbone.merge=true"):
        load_config(None, ["model.name=uniad", "model.hidden_dims=[64, 64]"])
    with pytest.raises(ConfigError, match="merged backbone map needs 1"):
        load_config(None, ["model.name=uniad", "backbone.merge=true", "model.hidden_dims=[64, 64]"])


def test_merged_features_are_levels_resized_to_the_coarsest_and_concatenated():
    levels = FeatureExtractor(PACKAGED_LITE0, (0, 1, 2, 3), smoothing=1)
    merged = FeatureExtractor(PACKAGED_LITE0, (0, 1, 2, 3), smoothing=1, merge=True)
    images = torch.rand(2, 3, 128, 128)
    separate = levels(images)
    (together,) = merged(images)
    assert together.shape == (2, sum(m.shape[1] for m in separate), 8, 8)
    assert merged.channels == [together.shape[1]] and merged.reductions == [16]
    expected = torch.cat([F.interpolate(m, size=(8, 8), mode="bilinear", align_corners=True) for m in separate], 1)
    assert torch.allclose(together, expected, atol=1e-6)


def test_uniad_scoring_is_l2_and_pooled_max():
    features = torch.zeros(1, 3, 2, 2)
    reconstruction = torch.zeros(1, 3, 2, 2)
    reconstruction[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])
    assert level_score(features, reconstruction, "l2")[0, 0, 0].item() == pytest.approx(5.0)
    maps = torch.zeros(2, 32, 32)
    maps[0, 0, 0] = 16.0  # one hot pixel: its 4x4 mean is 1
    maps[1, 10:14, 10:14] = 2.0  # a 4x4 blob of 2: its mean is 2
    assert mean_pool_scores(maps, 4).tolist() == pytest.approx([1.0, 2.0])
    with pytest.raises(ValueError, match="pool 64 exceeds"):
        mean_pool_scores(maps, 64)


@pytest.mark.slow
def test_uniad_trains_and_tests_in_the_same_pipeline(tiny_demo, feature_cache_dir, tmp_path):
    config = uniad_tiny(tiny_demo, feature_cache_dir)
    run_dir = train(config, tmp_path / "uniad")
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    results = evaluate(run_dir)
    assert set(results) == {"brick", "grass", "gravel", "tissue"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["protocol"]["model"] == "uniad"
    assert "L2 norm" in metrics["protocol"]["map"] and "16x16 average pooling" in metrics["protocol"]["image_score"]
    assert (run_dir / "report.html").is_file()
    # predict() on a file gives the score `rlr test` gave it (features fp16-cached there, fp32 here)
    model = load(run_dir)
    record = results["brick"].records[-1]
    predicted = model.predict(record.image_path)
    assert predicted.score == pytest.approx(float(results["brick"].scores[-1]), rel=1e-2)


def test_uniad_loss_is_mse_only_and_rlr_adds_cosine():
    from rlr.engine.step import training_loss

    target = [torch.randn(2, 4, 3, 3)]
    reconstruction = [target[0] * 2.0]  # same direction: cosine term 0 either way
    orthogonal = [torch.roll(target[0], 1, dims=1)]
    uniad_config = preset_config("uniad_cpu")
    rlr_config = preset_config("rlr_cpu", ("backbone.out_indices=[3]", "model.hidden_dims=[64]"))
    uniad = build_model(uniad_config, [4], [(16, 16)])
    rlr = build_model(rlr_config, [4], [(16, 16)])
    mse = F.mse_loss(orthogonal[0], target[0])
    assert training_loss(uniad_config, uniad, orthogonal, target).item() == pytest.approx(mse.item(), rel=1e-6)
    assert training_loss(rlr_config, rlr, orthogonal, target).item() > mse.item()
    assert training_loss(rlr_config, rlr, reconstruction, target).item() == pytest.approx(
        F.mse_loss(reconstruction[0], target[0]).item(), rel=1e-5
    )
