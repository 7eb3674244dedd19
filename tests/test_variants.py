"""The supplementary's variants: theta-fusion and K learnable references with the diversity term."""

import json

import pytest
import torch

from rlr.config import load_config
from rlr.engine.build import build_model
from rlr.engine.train import train
from rlr.errors import ConfigError
from rlr.models.rlr import LevelReconstructor, RLRLayer
from tests.conftest import tiny_config


def _layer_inputs(k: int, side: int = 8, dim: int = 16, batch: int = 2):
    torch.manual_seed(0)
    level = LevelReconstructor(12, (side, side), dim, num_layers=1, num_heads=2, window=3, num_references=k)
    tokens = torch.randn(batch, side * side, dim)
    return level, tokens


def test_theta_is_learnable_and_starts_as_configured():
    layer = RLRLayer(16, 2, 4, alpha=2.0, fusion="theta", theta_init=(0.25, 1.5))
    assert layer.theta.requires_grad
    assert layer.theta.tolist() == [0.25, 1.5]
    assert any(p is layer.theta for p in layer.parameters())
    alpha_layer = RLRLayer(16, 2, 4, alpha=2.0)
    assert not hasattr(alpha_layer, "theta")


def test_theta_fusion_weighs_mlka_then_lca():
    """theta = (1, 2) must give exactly alpha-fusion with alpha = 2 (same weights)."""
    torch.manual_seed(0)
    level, tokens = _layer_inputs(1)
    alpha_layer = level.layers[0]
    theta_layer = RLRLayer(16, 2, 4, alpha=0.0, fusion="theta", theta_init=(1.0, 2.0))
    missing = theta_layer.load_state_dict(alpha_layer.state_dict(), strict=False)
    assert missing.missing_keys == ["theta"]
    args = (level.embedded_references(), level.window_index, level.window_valid, level.far_mask)
    assert torch.allclose(alpha_layer(tokens, *args), theta_layer(tokens, *args), atol=1e-6)
    theta_layer.theta.data = torch.tensor([1.0, 3.0])  # a different ratio gives another output
    assert not torch.allclose(alpha_layer(tokens, *args), theta_layer(tokens, *args), atol=1e-3)


def test_k_references_are_summed_in_lca():
    level, tokens = _layer_inputs(2)
    layer = level.layers[0]
    refs = level.embedded_references()
    assert refs.shape[0] == 2
    captured = {}
    layer.fuse_norm.register_forward_hook(lambda module, args, out: captured.setdefault("fused_input", args[0]))
    layer(tokens, refs, level.window_index, level.window_valid, level.far_mask)
    lca = sum(layer.lca(tokens, r[None], r[None], level.window_index, level.window_valid) for r in refs)
    mlka = layer.mlka(tokens, refs.mean(0, keepdim=True), tokens, level.far_mask)
    assert torch.allclose(captured["fused_input"], 2.0 * lca + mlka, atol=1e-6)
    one = layer.lca(tokens, refs[:1], refs[:1], level.window_index, level.window_valid)
    assert not torch.allclose(lca, one, atol=1e-3)  # the second reference contributes


def test_k_references_have_k_times_the_reference_parameters():
    one, _ = _layer_inputs(1)
    three, _ = _layer_inputs(3)
    assert three.reference.shape == (3 * 64, 12)
    assert three.reference.numel() == 3 * one.reference.numel()


def test_diversity_term_is_zero_for_one_reference_and_falls_as_references_diverge():
    one, _ = _layer_inputs(1)
    assert one.reference_similarity().item() == 0.0
    level, _ = _layer_inputs(2)
    base = torch.randn(64, 12)
    values = []
    for spread in (0.0, 0.5, 1.0, 3.0):
        other = base + spread * torch.randn(64, 12)
        level.reference.data = torch.cat([base, other])
        values.append(level.reference_similarity().item())
    assert values[0] == pytest.approx(1.0, abs=1e-5)
    assert values == sorted(values, reverse=True) and values[-1] < 0.5
    level.reference.data = torch.cat([base, -base])
    assert level.reference_similarity().item() == pytest.approx(-1.0, abs=1e-5)


def test_diversity_gradient_pushes_references_apart():
    level, _ = _layer_inputs(2)
    base = torch.randn(64, 12)
    level.reference.data = torch.cat([base, base + 0.3 * torch.randn(64, 12)])  # two similar references
    optimizer = torch.optim.SGD([level.reference], lr=50.0)
    before = level.reference_similarity().item()
    assert before > 0.8
    for _ in range(20):
        optimizer.zero_grad()
        level.reference_similarity().backward()
        optimizer.step()
    assert level.reference_similarity().item() < before - 0.2


def test_model_auxiliary_loss_is_weighted_diversity(tiny_demo, feature_cache_dir):
    config = tiny_config(tiny_demo, feature_cache_dir, "model.num_references=2", "model.diversity_weight=0.5")
    model = build_model(config, [40, 112], [(16, 16), (8, 8)])
    expected = 0.5 * sum(level.reference_similarity() for level in model.levels)
    assert torch.allclose(model.auxiliary_loss(), expected)


def test_theta_is_logged_per_layer_and_saved_in_the_run(tiny_demo, feature_cache_dir, tmp_path):
    config = tiny_config(tiny_demo, feature_cache_dir, "model.fusion=theta", "model.theta_init=[0.5, 2.0]")
    run_dir = train(config, tmp_path / "theta")
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == config.train.epochs
    keys = {f"level{i}.layer0.theta_{part}" for i in (0, 1) for part in ("mlka", "lca")}
    assert keys <= set(log[0])
    # trained: the values moved away from their start
    assert log[-1]["level0.layer0.theta_mlka"] != 0.5
    assert log[-1]["level0.layer0.theta_lca"] != 2.0


def test_fusion_and_theta_init_are_validated():
    with pytest.raises(ConfigError, match="model.fusion 'sum'"):
        load_config(None, ["model.fusion=sum"])
    with pytest.raises(ConfigError, match="theta_init needs two"):
        load_config(None, ["model.theta_init=[1.0]"])
    with pytest.raises(ConfigError, match="num_references must be at least 1"):
        load_config(None, ["model.num_references=0"])
