"""UniAD (You et al., NeurIPS 2022), the baseline RLR is compared with: one merged map, one transformer.

Its recipe: MSE loss and no term of its own; anomaly map the L2 distance, image score the
maximum of a 16 x 16 average pooling of the map.
"""

from rlr.models.base import ModelSpec
from rlr.models.uniad.config import UniADConfig, build, validate
from rlr.models.uniad.network import UniAD

SPEC = ModelSpec(
    name="uniad",
    title="UniAD",
    config=UniADConfig,
    build=build,
    loss="mse",
    map_score="l2",
    image_score="mean_pool_max",
    validate=validate,
    smoke_overrides=(
        "backbone.out_indices=[0, 1, 2, 3]",
        "backbone.smoothing=1",
        "backbone.merge=true",
        "model.hidden_dims=[32]",
        "model.neighbourhood=3",
        "model.num_layers=1",
        "model.num_heads=2",
    ),
)

__all__ = ["SPEC", "UniAD", "UniADConfig"]
