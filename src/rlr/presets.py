"""Named configurations built into the package, so `rlr demo` works after any kind of install.

`configs/rlr_cpu.yaml` holds the same settings as a file to copy; a test keeps the two equal.
"""

from __future__ import annotations

from rlr.config import RunConfig, load_config

# Small enough to train in minutes on 2 CPU cores, same architecture and protocol as the paper.
CPU_OVERRIDES = (
    "name=rlr_cpu",
    "backbone.name=tf_efficientnet_lite0",
    "backbone.out_indices=[2, 3]",
    "data.image_size=256",
    "model.hidden_dims=[64, 128]",
    "model.num_layers=2",
    "model.num_heads=4",
    "train.epochs=10",
    "train.batch_size=8",
    "train.lr=0.001",
)


def cpu_config(extra: tuple[str, ...] = ()) -> RunConfig:
    """The small CPU configuration, with further `key=value` overrides applied last."""
    return load_config(None, CPU_OVERRIDES + tuple(extra))
