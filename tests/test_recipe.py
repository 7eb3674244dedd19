"""Recipe options beyond the paper: each changes what it should and, at its neutral value, nothing."""

import copy
import math

import pytest
import torch

from rlr.config import load_config
from rlr.engine.build import build_model, scoring_rule
from rlr.engine.step import learning_rate, level_losses, optimizer_step, training_loss
from rlr.errors import ConfigError
from rlr.models.losses import cosine_distance, hard_fraction_at, hard_mined, reconstruction_loss
from rlr.models.rlr import RLR
from rlr.presets import preset_config
from rlr.scoring import gaussian_blur, image_scores

from .reference import PlainMaskedAttention

SMALL = ("model.hidden_dims=[16, 32]", "model.num_layers=1", "model.num_heads=2", "model.windows=[3, 3]")


def small_config(*extra: str):
    return preset_config("rlr_cpu", (*SMALL, *extra))


def small_model(config, seed: int = 0) -> RLR:
    torch.manual_seed(seed)
    return build_model(config, [8, 12], [(6, 6), (4, 4)])


# --- image score: mean of the top q % ---


def test_top_percent_towards_zero_is_the_maximum_and_100_the_mean():
    torch.manual_seed(0)
    maps = torch.rand(3, 32, 32)
    smoothed = gaussian_blur(maps, 4.0).flatten(1)
    assert torch.equal(image_scores(maps, 4.0, 1e-9), image_scores(maps, 4.0, 0.0))
    assert torch.equal(image_scores(maps, 4.0, 0.0), smoothed.amax(1))
    assert torch.allclose(image_scores(maps, 4.0, 100.0), smoothed.mean(1))


def test_top_percent_averages_exactly_the_top_pixels():
    maps = torch.zeros(1, 10, 10)
    maps[0, 0, :5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    # 3 % of 100 pixels = the 3 largest, no smoothing
    assert image_scores(maps, 0.0, 3.0).item() == pytest.approx(4.0)
    # a fraction of a pixel rounds up: 1.5 % -> 2 pixels
    assert image_scores(maps, 0.0, 1.5).item() == pytest.approx(4.5)


def test_top_percent_reaches_the_scoring_rule_and_leaves_pixel_maps_alone():
    plain = scoring_rule(small_config())
    top = scoring_rule(small_config("eval.image_score_top_percent=1"))
    maps = torch.rand(2, 64, 64)
    assert torch.equal(plain.pixel_maps(maps), top.pixel_maps(maps))
    assert not torch.equal(plain.image_scores(maps), top.image_scores(maps))
    assert "top 1 %" in top.describe()["image_score"] and "max" in plain.describe()["image_score"]


# --- hard-mined cosine loss ---


def test_hard_mining_with_fraction_one_is_the_plain_cosine_loss():
    torch.manual_seed(0)
    target = torch.randn(2, 8, 5, 5)
    reconstruction = torch.randn(2, 8, 5, 5, requires_grad=True)
    plain = cosine_distance(reconstruction, target).mean()
    (plain_grad,) = torch.autograd.grad(plain, reconstruction)
    mined = reconstruction_loss(reconstruction, target, "cosine", hard_fraction=1.0, hard_factor=0.1)
    (mined_grad,) = torch.autograd.grad(mined, reconstruction)
    assert mined.item() == plain.item()
    assert torch.equal(mined_grad, plain_grad)


def test_hard_mining_keeps_the_value_and_scales_only_the_easy_tokens_gradient():
    torch.manual_seed(1)
    distances = torch.rand(4, 25, requires_grad=True)
    mined = hard_mined(distances, fraction=0.2, factor=0.1)
    assert torch.equal(mined.detach(), distances.detach())
    (grad,) = torch.autograd.grad(mined.sum(), distances)
    hard = distances.detach() >= torch.quantile(distances.detach().flatten(), 0.8)
    assert hard.sum().item() == 20  # the worst 20 % of 100 tokens
    assert torch.allclose(grad[hard], torch.ones(20)) and torch.allclose(grad[~hard], torch.full((80,), 0.1))


def test_hard_fraction_ramps_from_one_to_its_final_value():
    assert hard_fraction_at(0, 0.1, 1000) == 1.0
    assert hard_fraction_at(500, 0.1, 1000) == pytest.approx(0.55)
    assert hard_fraction_at(1000, 0.1, 1000) == pytest.approx(0.1)
    assert hard_fraction_at(5000, 0.1, 1000) == pytest.approx(0.1)
    assert hard_fraction_at(0, 0.1, 0) == pytest.approx(0.1)


def test_cosine_loss_drops_the_mse_term():
    target = [torch.randn(2, 4, 3, 3)]
    doubled = [target[0] * 2.0]  # same direction: cosine distance 0, MSE not
    config = preset_config("rlr_cpu", ("backbone.out_indices=[3]", "model.hidden_dims=[64]", "train.loss=cosine"))
    model = build_model(config, [4], [(16, 16)])
    assert training_loss(config, model, doubled, target).item() == pytest.approx(0.0, abs=1e-6)


# --- noisy bottleneck ---


def test_input_dropout_acts_in_training_only_and_zero_changes_nothing():
    features = [torch.randn(2, 8, 6, 6), torch.randn(2, 12, 4, 4)]
    plain = small_model(small_config())
    none = small_model(small_config("model.input_dropout=0.0"))
    noisy = small_model(small_config("model.input_dropout=0.5"))
    assert plain.state_dict().keys() == noisy.state_dict().keys()  # no new parameters: old runs still load
    for model in (plain, none, noisy):
        model.train()
    torch.manual_seed(3)
    reference = plain(features)
    torch.manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(reference, none(features)))
    torch.manual_seed(3)
    assert not torch.allclose(reference[0], noisy(features)[0])
    plain.eval()
    noisy.eval()
    assert all(torch.equal(a, b) for a, b in zip(plain(features), noisy(features)))


# --- reference reach: LCA over the reference's window (paper) or all of it ---


def lca_only(model: RLR) -> RLR:
    """The model with every MLKA silenced, so the output shows what LCA reads of the reference."""
    for level in model.levels:
        for layer in level.layers:
            layer.mlka.forward = lambda query, *rest: torch.zeros_like(query)
    return model


def reference_gradient(config, position: int) -> torch.Tensor:
    """|d output[position] / d reference| per reference token of the first level (LCA only)."""
    model = lca_only(small_model(config)).eval()
    model(  # the first level's output at one position, summed over channels
        [torch.randn(1, 8, 6, 6), torch.randn(1, 12, 4, 4)]
    )[0].flatten(2)[0, :, position].sum().backward()
    return model.levels[0].reference.grad.abs().sum(-1)


def test_global_reach_reads_the_whole_reference_and_window_reach_only_its_window():
    corner = 0  # position (0, 0) of the 6 x 6 map; its 3 x 3 window holds tokens 0, 1, 6, 7
    window = reference_gradient(small_config(), corner)
    whole = reference_gradient(small_config("model.reference_reach=global"), corner)
    inside = torch.zeros(36, dtype=torch.bool)
    inside[[0, 1, 6, 7]] = True
    assert torch.all(window[~inside] == 0) and torch.all(window[inside] > 0)
    assert torch.all(whole > 0)


def test_global_reach_has_the_same_parameters_and_one_softmax_over_all_references():
    window = small_model(small_config("model.num_references=2"))
    whole = small_model(small_config("model.num_references=2", "model.reference_reach=global"))
    shapes = {name: tensor.shape for name, tensor in window.state_dict().items()}
    assert shapes == {name: tensor.shape for name, tensor in whole.state_dict().items()}  # checkpoints interchange
    whole.load_state_dict(window.state_dict())
    layer, level = whole.levels[0].layers[0], whole.levels[0]
    tokens = torch.randn(2, 36, 16)
    references = level.embedded_references()  # (2, 36, 16)
    flat = references.reshape(1, 72, 16)
    plain = PlainMaskedAttention(16, 2)  # the written-out softmax, here over both references' 72 tokens at once
    plain.load_state_dict(layer.lca.state_dict())
    expected = plain(tokens, flat, flat, torch.ones(36, 72, dtype=torch.bool))
    assert torch.allclose(layer.lca(tokens, flat, flat, None), expected, atol=1e-6)
    calls = []  # and the layer itself makes exactly that one call, with every reference's tokens
    read = layer.lca.forward
    layer.lca.forward = lambda *args: calls.append(args) or read(*args)
    layer(tokens, references, level.window_index, level.window_valid, level.far_mask)
    assert len(calls) == 1 and torch.equal(calls[0][1], flat) and calls[0][3] is None


# --- learning-rate schedule ---


def test_constant_schedule_is_unchanged_and_warmup_ramps_linearly():
    config = small_config("train.lr=0.001", "train.epochs=4")
    assert all(learning_rate(config, step, 10) == 0.001 for step in range(40))
    warm = small_config("train.lr=0.001", "train.epochs=4", "train.warmup_steps=10")
    assert [learning_rate(warm, step, 10) for step in (0, 4, 9, 10, 39)] == pytest.approx(
        [1e-4, 5e-4, 1e-3, 1e-3, 1e-3]
    )


def test_cosine_schedule_decays_from_lr_to_its_floor():
    config = small_config("train.lr=0.001", "train.epochs=5", "train.schedule=cosine", "train.warmup_steps=10")
    rates = [learning_rate(config, step, 10) for step in range(50)]
    assert rates[9] == pytest.approx(1e-3) and rates[10] == pytest.approx(1e-3)
    assert rates[-1] == pytest.approx(1e-4)  # min_lr_ratio 0.1 at the last step
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    middle = 10 + (49 - 10) / 2
    assert learning_rate(config, int(middle), 10) == pytest.approx(
        1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * (int(middle) - 10) / 39))
    )


# --- the release's initialisation ---


def test_release_init_scales_the_embeddings_and_zeroes_attention_biases():
    default = small_model(small_config())
    release = small_model(small_config("model.init=release"))
    assert default.state_dict().keys() == release.state_dict().keys()
    wide = build_model(small_config("model.init=release", "model.hidden_dims=[64, 64]"), [512, 512], [(6, 6), (4, 4)])
    narrow = build_model(small_config("model.hidden_dims=[64, 64]"), [512, 512], [(6, 6), (4, 4)])
    ratio = wide.levels[0].reference_embed.weight.std() / narrow.levels[0].reference_embed.weight.std()
    assert ratio.item() == pytest.approx(math.sqrt(6.0), rel=0.05)  # Kaiming-normal vs nn.Linear's default: ~2.4x
    layer = release.levels[1].layers[0]
    for attention in (layer.lca, layer.mlka):
        bound = math.sqrt(6.0 / (4 * attention.q_proj.in_features))
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            assert torch.count_nonzero(projection.bias) == 0
            assert projection.weight.abs().max() <= bound
        assert torch.count_nonzero(attention.out_proj.bias) == 0
    default_layer = default.levels[1].layers[0]
    assert torch.count_nonzero(default_layer.lca.q_proj.bias) > 0
    assert torch.equal(default_layer.ffn.fc1.weight, layer.ffn.fc1.weight)  # only embeddings and attentions change
    assert torch.equal(default.levels[0].reference, release.levels[0].reference)  # R itself is untouched


# --- the release's optimiser stepping ---


def _one_step(config, model, features):
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)

    def losses():
        return level_losses(config, model, model(features), features)

    optimizer_step(config, model, optimizer, losses(), losses)
    return optimizer


def test_release_stepping_steps_once_per_level_on_one_adam():
    features = [torch.randn(2, 8, 6, 6), torch.randn(2, 12, 4, 4)]
    config = small_config("train.release_stepping=true", "train.lr=0.01")
    start = small_model(config)
    stepped = copy.deepcopy(start)
    optimizer = _one_step(config, stepped, features)
    # level 0 is stepped twice (its own step, then a momentum-only one); level 1 had no gradient yet
    # at the first step of the run, as in the release, so it is stepped once on the first batch
    steps = [[optimizer.state[p]["step"].item() for p in level.parameters()] for level in stepped.levels]
    assert set(steps[0]) == {2} and set(steps[1]) == {1}

    # by hand: level 0's loss alone, step; then level 1's alone, step (gradients zeroed, not freed)
    manual = copy.deepcopy(start)
    adam = torch.optim.Adam(manual.parameters(), lr=0.01)
    for level in range(2):
        adam.zero_grad(set_to_none=False)
        level_losses(config, manual, manual(features), features)[level].backward()
        adam.step()
    # level 1's reconstruction did not depend on level 0, so computing it after the first step is the same
    for a, b in zip(stepped.parameters(), manual.parameters()):
        assert torch.allclose(a, b, atol=1e-6)

    summed = copy.deepcopy(start)
    _one_step(small_config("train.lr=0.01"), summed, features)
    moved = [(a - s).abs().max().item() for a, s in zip(stepped.levels[0].parameters(), start.levels[0].parameters())]
    once = [(a - s).abs().max().item() for a, s in zip(summed.levels[0].parameters(), start.levels[0].parameters())]
    assert sum(moved) > 1.2 * sum(once)  # the extra momentum-only step moves level 0 further


# --- config checks ---


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.hard_fraction=0", "train.hard_fraction must lie in (0, 1]"),
        ("train.hard_factor=2", "train.hard_factor must lie in [0, 1]"),
        ("model.input_dropout=1", "model.input_dropout must lie in [0, 1)"),
        ("eval.image_score_top_percent=150", "eval.image_score_top_percent must lie in [0, 100]"),
        ("train.schedule=linear", "unknown train.schedule 'linear'"),
        ("train.loss=l1", "unknown train.loss 'l1'"),
        ("model.init=xavier", "unknown model.init 'xavier'"),
        ("model.reference_reach=far", "unknown model.reference_reach 'far'"),
        ("train.warmup_steps=-1", "train.warmup_steps must be 0 or more"),
        ("train.release_stepping=yes please", "train.release_stepping must be true or false"),
    ],
)
def test_recipe_options_out_of_range_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(None, (override,))


def test_recipe_options_refused_where_they_would_do_nothing():
    with pytest.raises(ConfigError, match="mines the cosine term"):
        load_config(None, ("train.loss=mse", "train.hard_fraction=0.1"))
    with pytest.raises(ConfigError, match="are RLR options"):
        preset_config("uniad_cpu", ("model.input_dropout=0.2",))
    with pytest.raises(ConfigError, match="one reference"):
        load_config(None, ("train.release_stepping=true", "model.num_references=2"))


def test_release_stepping_trains_several_epochs(tiny_demo, feature_cache_dir, tmp_path):
    """Every level after the first runs its forward on the weights the previous step left (as the release
    does): reusing the first forward fails in autograd from the second batch on, once Adam has momentum."""
    from rlr.engine.train import train

    from .conftest import tiny_config

    config = tiny_config(tiny_demo, feature_cache_dir, "train.release_stepping=true", "train.batch_size=4")
    run_dir = train(config, tmp_path / "run")
    history = torch.load(run_dir / "last.pt", weights_only=True)["history"]
    assert [record["epoch"] for record in history] == [1, 2] and all(math.isfinite(r["loss"]) for r in history)
