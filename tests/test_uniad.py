"""Semantics of the UniAD baseline reconstructor: masks, layer-wise queries, interface."""

import pytest
import torch

from rlr.models.uniad import UniAD

CHANNELS, SIDE, DIM, LAYERS, HEADS, NEIGHBOURHOOD = 24, 8, 32, 2, 2, 3


def _model(**overrides) -> UniAD:
    torch.manual_seed(0)
    settings = {"num_layers": LAYERS, "num_heads": HEADS, "neighbourhood": NEIGHBOURHOOD}
    settings.update(overrides)
    return UniAD(CHANNELS, (SIDE, SIDE), DIM, **settings)


def _features(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def _index(row: int, col: int, side: int = SIDE) -> int:
    return row * side + col


def _box(row: int, col: int) -> set[int]:
    """Flat indices of the clipped NEIGHBOURHOOD box around (row, col), by brute force."""
    half = NEIGHBOURHOOD // 2
    return {
        _index(r, c)
        for r in range(row - half, row + half + 1)
        for c in range(col - half, col + half + 1)
        if 0 <= r < SIDE and 0 <= c < SIDE
    }


def test_output_is_one_map_of_the_input_shape():
    model = _model()
    features = _features(batch=3)
    out = model([features])
    assert isinstance(out, list) and len(out) == 1
    assert out[0].shape == features.shape


def test_defaults_mirror_uniad():
    model = UniAD(272, (14, 14), 256)
    assert len(model.encoder) == len(model.decoder) == 4
    assert model.encoder[0].self_attention.attention.num_heads == 8
    assert model.encoder[0].feed_forward.ffn.fc1.out_features == 1024
    assert isinstance(model.encoder[0].feed_forward.ffn.act, torch.nn.ReLU)
    assert model.encoder[0].feed_forward.ffn.drop1.p == model.encoder[0].feed_forward.ffn.drop2.p == 0.1
    assert model.decoder[0].query.shape == (196, 256)
    hidden = ~model.allowed[_index(7, 7, side=14)].view(14, 14)
    assert hidden.sum() == 49 and hidden[4:11, 4:11].all()


def test_gradients_reach_every_parameter():
    model = _model()
    model.train()
    model([_features()])[0].pow(2).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_allowed_hides_exactly_the_neighbourhood():
    model = _model()
    assert model.allowed.dtype == torch.bool and model.allowed.shape == (SIDE * SIDE, SIDE * SIDE)
    everything = set(range(SIDE * SIDE))
    for row, col in [(0, 0), (0, 4), (3, 3), (7, 7), (5, 0)]:
        allowed = set(model.allowed[_index(row, col)].nonzero().flatten().tolist())
        assert allowed == everything - _box(row, col)


def test_masks_are_not_saved_with_the_weights():
    assert "allowed" not in _model().state_dict()


@torch.no_grad()
def test_encoder_layer_ignores_the_neighbours_but_not_far_positions():
    model = _model().eval()
    layer = model.encoder[0]
    position = model.position()
    tokens = torch.randn(1, SIDE * SIDE, DIM)
    centre = _index(4, 4)
    base = layer(tokens, position, model.allowed)[0, centre]

    near = tokens.clone()
    neighbours = sorted(_box(4, 4) - {centre})
    near[0, neighbours] += 5 * torch.randn(len(neighbours), DIM)
    assert torch.allclose(layer(near, position, model.allowed)[0, centre], base, atol=1e-5)

    far = tokens.clone()
    far[0, _index(0, 7)] += 5.0
    assert not torch.allclose(layer(far, position, model.allowed)[0, centre], base, atol=1e-3)


@torch.no_grad()
def test_decoder_layer_output_never_sees_its_own_neighbourhood():
    """Both decoder attentions are masked and the query is learned: no path from the box, self included."""
    model = _model().eval()
    layer = model.decoder[1]
    position = model.position()
    memory = torch.randn(1, SIDE * SIDE, DIM)
    previous = torch.randn(1, SIDE * SIDE, DIM)
    centre = _index(2, 5)
    base = layer(memory, previous, position, model.allowed)[0, centre]

    box = sorted(_box(2, 5))
    memory_near, previous_near = memory.clone(), previous.clone()
    memory_near[0, box] += 5 * torch.randn(len(box), DIM)
    previous_near[0, box] += 5 * torch.randn(len(box), DIM)
    assert torch.allclose(layer(memory_near, previous_near, position, model.allowed)[0, centre], base, atol=1e-5)

    far = _index(7, 0)
    memory_far = memory.clone()
    memory_far[0, far] += 5.0
    assert not torch.allclose(layer(memory_far, previous, position, model.allowed)[0, centre], base, atol=1e-3)
    previous_far = previous.clone()
    previous_far[0, far] += 5.0
    assert not torch.allclose(layer(memory, previous_far, position, model.allowed)[0, centre], base, atol=1e-3)


def test_each_decoder_layer_owns_its_query():
    model = _model(num_layers=3)
    queries = [layer.query for layer in model.decoder]
    assert len({q.data_ptr() for q in queries}) == 3
    assert all(q.shape == (SIDE * SIDE, DIM) for q in queries)
    assert not torch.allclose(queries[0], queries[1]) and not torch.allclose(queries[1], queries[2])
    saved = [key for key in model.state_dict() if key.endswith(".query")]
    assert saved == ["decoder.0.query", "decoder.1.query", "decoder.2.query"]


def test_position_embedding_is_row_major_rows_and_columns():
    model = _model()
    position = model.position()
    assert position.shape == (SIDE * SIDE, DIM)
    half = DIM // 2
    assert torch.equal(position[_index(2, 6), :half], model.column_embed[6])
    assert torch.equal(position[_index(2, 6), half:], model.row_embed[2])


def test_auxiliary_loss_is_zero_and_diagnostics_empty():
    model = _model().double()
    loss = model.auxiliary_loss()
    assert loss.shape == () and loss.item() == 0.0
    assert loss.dtype == torch.float64 and loss.device == model.project.weight.device
    assert model.diagnostics() == {}


@torch.no_grad()
def test_eval_is_deterministic_and_training_uses_dropout():
    model = _model(dropout=0.5)
    features = _features()
    model.eval()
    assert torch.equal(model([features])[0], model([features])[0])
    model.train()
    assert not torch.allclose(model([features])[0], model([features])[0])


@torch.no_grad()
def test_samples_are_reconstructed_independently():
    model = _model().eval()
    features = _features(batch=2)
    changed = features.clone()
    changed[1] = torch.randn(CHANNELS, SIDE, SIDE)
    assert torch.allclose(model([features])[0][0], model([changed])[0][0], atol=1e-5)


@torch.no_grad()
def test_a_changed_token_reaches_far_positions():
    """Information travels through the unmasked far field (the model is not a per-token map)."""
    model = _model().eval()
    features = _features(batch=1)
    changed = features.clone()
    changed[0, :, 0, 0] += 5.0
    delta = (model([changed])[0] - model([features])[0]).abs().sum(dim=1)[0]
    assert delta[7, 7] > 1e-4


def test_too_large_neighbourhood_is_named():
    with pytest.raises(ValueError, match="9x9 hidden neighbourhood covers the whole 8x8 map"):
        UniAD(CHANNELS, (SIDE, SIDE), DIM, neighbourhood=9)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"dim": 30, "num_heads": 4}, "not divisible by 4 heads"),
        ({"dim": 9, "num_heads": 3}, "must be even"),
        ({"neighbourhood": 4}, "positive odd number"),
    ],
)
def test_bad_settings_raise(overrides, message):
    settings = {"dim": DIM, "num_heads": HEADS, "neighbourhood": NEIGHBOURHOOD}
    settings.update(overrides)
    dim = settings.pop("dim")
    with pytest.raises(ValueError, match=message):
        UniAD(CHANNELS, (SIDE, SIDE), dim, **settings)


def test_wrong_inputs_raise():
    model = _model()
    with pytest.raises(ValueError, match="one merged feature map"):
        model([_features(), _features()])
    with pytest.raises(ValueError, match="expected a"):
        model([torch.randn(1, CHANNELS, SIDE, SIDE + 1)])
