"""The efficient attentions give the plain masked full attention's results, with no per-step masks.

The reference (`tests/reference.py`) writes LCA and MLKA out as q k^T, -inf outside the mask,
softmax, times v over all (HW, HW) pairs; the efficient model must match it in float32 to 1e-5 on
the paper's map sizes and windows, for one and two references and both fusions, forward, with
gradients close. 16x16 and 32x32 run every combination; 64x64, where the reference's (HW, HW)
scores cost seconds, runs each K once with one narrow head and batch 1, so the suite stays quick.
"""

import pytest
import torch

import rlr.models.layers.attention as attention_module
import rlr.models.rlr.network as rlr_module
from rlr.models.layers.attention import window_mask, window_neighbours
from rlr.models.losses import reconstruction_loss
from rlr.models.rlr import RLR, LevelReconstructor, RLRLayer
from tests.reference import plain_layer, plain_reference

TOLERANCE = 1e-5  # forward, max abs difference
GRAD_TOLERANCE = 1e-4  # gradients sum over every token, so float32 rounding adds up further
FUSIONS = ("alpha", "theta")
THETA = (0.7, 1.3)  # unequal, so swapping MLKA and LCA in the fusion would show


def _shape_for(side: int) -> tuple[int, int, int]:
    """(batch, width, heads): at 64x64 one head of width 4 keeps the reference's (HW)^2 scores small."""
    return (1, 4, 1) if side == 64 else (2, 16, 2)


def _assert_grads_close(fast: dict[str, torch.Tensor], plain: dict[str, torch.Tensor]) -> None:
    assert fast.keys() == plain.keys()
    for name, grad in fast.items():
        scale = plain[name].abs().max().item()
        assert (grad - plain[name]).abs().max().item() <= GRAD_TOLERANCE * max(1.0, scale), name


SMALL = [(side, window, k, fusion) for side, window in [(16, 5), (32, 7)] for k in (1, 2) for fusion in FUSIONS]


@pytest.mark.parametrize("side,window,num_references,fusion", SMALL + [(64, 11, 2, "theta")])
def test_layer_matches_plain_masked_attention(side, window, num_references, fusion):
    torch.manual_seed(side + num_references)
    batch, dim, heads = _shape_for(side)
    tokens = side * side
    layer = RLRLayer(dim, num_heads=heads, ffn_ratio=2, alpha=2.0, fusion=fusion, theta_init=THETA)
    plain = plain_layer(layer, side, side, window)
    index, valid = window_neighbours(side, side, window)
    far = ~window_mask(side, side, window)
    hidden = torch.randn(batch, tokens, dim)
    references = torch.randn(num_references, tokens, dim)
    upstream = torch.randn_like(hidden)

    grads, outputs = [], []
    for model in (layer, plain):
        x, refs = hidden.clone().requires_grad_(), references.clone().requires_grad_()
        out = model(x, refs, index, valid, far)
        (out * upstream).sum().backward()
        outputs.append(out.detach())
        named = {f"param.{n}": p.grad for n, p in model.named_parameters()}
        grads.append({"tokens": x.grad, "references": refs.grad, **named})

    assert (outputs[0] - outputs[1]).abs().max().item() < TOLERANCE
    _assert_grads_close(*grads)


@pytest.mark.parametrize("side,window,num_references,fusion", SMALL + [(64, 11, 1, "alpha")])
def test_level_reconstructor_matches_plain_reference(side, window, num_references, fusion):
    torch.manual_seed(side * num_references)
    channels = 6
    batch, dim, heads = _shape_for(side)
    model = RLR(
        [channels],
        [(side, side)],
        [dim],
        num_layers=1 if side == 64 else 2,
        num_heads=heads,
        ffn_ratio=2,
        windows=[window],
        num_references=num_references,
        fusion=fusion,
        theta_init=THETA,
    )
    plain = plain_reference(model)
    features = torch.randn(batch, channels, side, side)

    outputs, grads = [], []
    for candidate in (model, plain):
        candidate.zero_grad()
        out = candidate([features])[0]
        loss = reconstruction_loss(out, features) + candidate.auxiliary_loss()
        loss.backward()
        outputs.append(out.detach())
        grads.append({n: p.grad for n, p in candidate.named_parameters()})

    assert (outputs[0] - outputs[1]).abs().max().item() < TOLERANCE
    _assert_grads_close(*grads)


def test_plain_reference_has_the_same_state_dict_and_is_a_separate_copy():
    model = RLR([8, 16], [(16, 16), (8, 8)], [16, 32], num_layers=1, num_heads=2, windows=[5, 3], num_references=2)
    plain = plain_reference(model)
    ours, theirs = model.state_dict(), plain.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    plain.load_state_dict(ours)  # strict, both ways
    model.load_state_dict(theirs)
    assert plain.levels[0].layers[0].lca.q_proj.weight is not model.levels[0].layers[0].lca.q_proj.weight


def test_efficient_forward_builds_no_mask(monkeypatch):
    torch.manual_seed(0)
    model = RLR([8], [(16, 16)], [16], num_layers=2, num_heads=2, num_references=2)

    def refuse(*args, **kwargs):
        raise AssertionError("a mask was built during the forward pass")

    for module in (rlr_module, attention_module):
        monkeypatch.setattr(module, "window_mask", refuse)
        monkeypatch.setattr(module, "window_neighbours", refuse)
    model([torch.randn(2, 8, 16, 16)])[0].square().mean().backward()


def test_masks_are_non_persistent_buffers_that_move_with_the_module():
    level = LevelReconstructor(8, (16, 16), dim=16, num_layers=1, num_heads=2)
    masks = {"window_index", "window_valid", "far_mask"}
    assert masks <= dict(level.named_buffers()).keys()
    assert not masks & level.state_dict().keys()
    level.to("meta")
    assert all(getattr(level, name).device.type == "meta" for name in masks)
    assert level.far_mask.dtype == torch.bool and level.window_index.dtype == torch.long
