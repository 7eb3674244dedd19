"""RLR (He et al., ECCV 2024): reconstruction from learnable references, one reconstructor per level.

Its recipe: MSE + cosine loss, plus the references' diversity term (K > 1); anomaly map
MSE + cosine distance, image score the maximum of the Gaussian-smoothed map.
"""

from rlr.models.base import ModelSpec
from rlr.models.rlr.config import RLRConfig, build, validate
from rlr.models.rlr.network import RLR, LevelReconstructor, RLRLayer

SPEC = ModelSpec(
    name="rlr",
    title="RLR",
    config=RLRConfig,
    build=build,
    loss="mse_cos",
    map_score="mse_cos",
    image_score="gaussian_max",
    validate=validate,
    smoke_overrides=("model.hidden_dims=[32, 64]", "model.windows=[5, 3]", "model.num_layers=1", "model.num_heads=2"),
)

__all__ = ["SPEC", "RLR", "RLRConfig", "LevelReconstructor", "RLRLayer"]
