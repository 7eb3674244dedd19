"""Semantics of the RLR reconstructor that the method depends on."""

import pytest
import torch

from rlr.models.jitter import feature_jitter
from rlr.models.layers.attention import MaskedAttention, WindowAttention, window_mask, window_neighbours
from rlr.models.layers.position import sincos_position_encoding
from rlr.models.losses import reconstruction_loss
from rlr.models.rlr import RLR, LevelReconstructor


def _grid_index(row: int, col: int, width: int) -> int:
    return row * width + col


def test_window_mask_is_a_clipped_box():
    mask = window_mask(6, 6, 3)
    centre = _grid_index(2, 2, 6)
    allowed = mask[centre].view(6, 6).nonzero().tolist()
    assert sorted(allowed) == [[r, c] for r in (1, 2, 3) for c in (1, 2, 3)]
    corner = mask[_grid_index(0, 0, 6)].view(6, 6)
    assert corner.sum() == 4 and corner[:2, :2].all()


def test_window_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        window_mask(4, 4, 4)


@torch.no_grad()
def test_lca_depends_only_on_reference_inside_the_window():
    torch.manual_seed(0)
    height = width = 8
    dim, window = 16, 3
    attention = WindowAttention(dim, num_heads=2)
    index, valid = window_neighbours(height, width, window)
    local = window_mask(height, width, window)
    queries = torch.randn(1, height * width, dim)
    reference = torch.randn(1, height * width, dim)
    position = _grid_index(4, 4, width)
    base = attention(queries, reference, reference, index, valid)[0, position]

    outside = reference.clone()
    outside[0, ~local[position]] += 5 * torch.randn(int((~local[position]).sum()), dim)
    assert torch.allclose(attention(queries, outside, outside, index, valid)[0, position], base, atol=1e-6)

    inside = reference.clone()
    inside[0, _grid_index(5, 3, width)] += 5.0
    assert not torch.allclose(attention(queries, inside, inside, index, valid)[0, position], base, atol=1e-3)


@pytest.mark.parametrize("side,window", [(16, 5), (32, 7), (64, 11), (6, 3)])
def test_window_attention_equals_masked_full_attention(side, window):
    torch.manual_seed(side)
    dim = 16
    windowed = WindowAttention(dim, num_heads=2)
    full = MaskedAttention(dim, num_heads=2)
    full.load_state_dict(windowed.state_dict())
    queries = torch.randn(2, side * side, dim)
    keys = torch.randn(1, side * side, dim)
    values = torch.randn_like(keys)
    index, valid = window_neighbours(side, side, window)
    with torch.no_grad():
        fast = windowed(queries, keys, values, index, valid)
        reference = full(queries, keys, values, window_mask(side, side, window))
    assert (fast - reference).abs().max() < 1e-5


@torch.no_grad()
def test_mlka_ignores_input_values_in_its_own_neighbourhood():
    torch.manual_seed(1)
    height = width = 8
    dim, window = 16, 3
    attention = MaskedAttention(dim, num_heads=2)
    far = ~window_mask(height, width, window)
    queries = torch.randn(1, height * width, dim)
    keys = torch.randn(1, height * width, dim)
    values = torch.randn(1, height * width, dim)
    position = _grid_index(3, 3, width)
    base = attention(queries, keys, values, far)[0, position]

    near = ~far[position]
    changed = values.clone()
    changed[0, near] += 10 * torch.randn(int(near.sum()), dim)
    assert near.sum() == window * window
    assert torch.allclose(attention(queries, keys, changed, far)[0, position], base, atol=1e-6)

    distant = values.clone()
    distant[0, _grid_index(7, 7, width)] += 10.0
    assert not torch.allclose(attention(queries, keys, distant, far)[0, position], base, atol=1e-3)


@pytest.mark.parametrize("side,channels", [(16, 24), (32, 12), (64, 8)])
def test_level_reconstructor_shapes_use_paper_windows(side, channels):
    level = LevelReconstructor(channels, (side, side), dim=16, num_layers=1, num_heads=2)
    assert level.window == {16: 5, 32: 7, 64: 11}[side]
    features = torch.randn(2, channels, side, side)
    assert level(features).shape == features.shape


def test_unknown_map_size_needs_a_configured_window():
    with pytest.raises(ValueError, match="model.windows"):
        LevelReconstructor(8, (12, 12), dim=16, num_layers=1, num_heads=2)
    assert LevelReconstructor(8, (12, 12), dim=16, num_layers=1, num_heads=2, window=3).window == 3


def test_window_covering_the_whole_map_is_refused():
    with pytest.raises(ValueError, match="MLKA would see nothing"):
        LevelReconstructor(8, (4, 4), dim=16, num_layers=1, num_heads=2, window=7)


def test_levels_have_independent_weights_and_references():
    model = RLR([8, 16], [(16, 16), (8, 8)], [16, 32], num_layers=1, num_heads=2, windows=[5, 3])
    assert model.levels[0].reference.shape == (256, 8)
    assert model.levels[1].reference.shape == (64, 16)
    outputs = model([torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)])
    assert [o.shape for o in outputs] == [(1, 8, 16, 16), (1, 16, 8, 8)]


def _influence(level: LevelReconstructor, row: int, col: int) -> torch.Tensor:
    """(h, w): the Jacobian norm of the output at (row, col) with respect to the input at every position."""
    channels, (height, width) = level.project.out_features, level.map_size
    features = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(0))
    jacobian = torch.autograd.functional.jacobian(lambda x: level(x)[0, :, row, col], features)  # (C, 1, C, h, w)
    return jacobian.pow(2).sum(dim=(0, 1, 2)).sqrt()


def _self_over_far(level: LevelReconstructor, row: int = 8, col: int = 8) -> float:
    """How much more the output at p depends on the input at p than on the most influential far input."""
    influence = _influence(level, row, col)
    height, width = level.map_size
    far = ~window_mask(height, width, level.window)[row * width + col].view(height, width)
    return (influence[row, col] / influence[far].max()).item()


# An identity path makes the input at p dominate the output at p (measured: 200-400x the largest far
# influence over ten seeds); without one the input at p only steers the reference lookups (1-10x).
SHORTCUT_RATIO = 30.0


def test_no_identity_path_output_at_p_is_not_driven_by_the_input_at_p():
    torch.manual_seed(0)
    level = LevelReconstructor(8, (16, 16), dim=16, num_layers=2, num_heads=2).eval()
    assert _self_over_far(level) < SHORTCUT_RATIO


def test_the_identity_path_check_fails_on_an_injected_shortcut():
    """Injected `tokens + mixed` (MLKA's query is the tokens themselves): the check above must catch it."""
    torch.manual_seed(0)
    level = LevelReconstructor(8, (16, 16), dim=16, num_layers=2, num_heads=2).eval()
    for layer in level.layers:
        attend = layer.mlka.forward
        layer.mlka.forward = lambda query, key, value, allowed, attend=attend: (
            query + attend(query, key, value, allowed)
        )
    assert _self_over_far(level) > SHORTCUT_RATIO


def test_position_encoding_halves_encode_x_then_y():
    enc = sincos_position_encoding(4, 4, 16)
    assert enc.shape == (16, 16)
    same_row = enc[_grid_index(1, 0, 4)], enc[_grid_index(1, 3, 4)]
    assert torch.equal(same_row[0][8:], same_row[1][8:]) and not torch.equal(same_row[0][:8], same_row[1][:8])


def test_jitter_scales_with_token_norm():
    torch.manual_seed(0)
    features = torch.zeros(2, 4, 3, 3)
    features[:, :, 0, 0] = 100.0
    noisy = feature_jitter(features, scale=4.0)
    assert torch.equal(noisy[:, :, 1, 1], features[:, :, 1, 1])  # zero-norm token: no noise
    assert (noisy[:, :, 0, 0] - 100.0).abs().max() > 0


def test_loss_is_zero_for_a_perfect_reconstruction_and_positive_otherwise():
    target = torch.randn(2, 4, 3, 3)
    assert reconstruction_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert reconstruction_loss(target + 1.0, target).item() > 0.5
