"""Named configurations built into the package, so `rlr demo` and `rlr ablate` work after any install.

`configs/rlr_cpu.yaml` and `configs/uniad_cpu.yaml` hold the same settings as files to copy;
a test keeps each file equal to its preset.
"""

from __future__ import annotations

from typing import Sequence

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

# UniAD scaled down the same way: the four finest Lite0 stages merged at stride 16 (16x16x192 at
# 256 px), 2 + 2 layers of width 128; UniAD's own jitter, loss, optimizer, clipping and scoring.
UNIAD_CPU_OVERRIDES = (
    "name=uniad_cpu",
    "backbone.name=tf_efficientnet_lite0",
    "backbone.out_indices=[0, 1, 2, 3]",
    "backbone.smoothing=1",
    "backbone.merge=true",
    "data.image_size=256",
    "model.name=uniad",
    "model.hidden_dims=[128]",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.neighbourhood=7",
    "model.dropout=0.1",
    "train.epochs=10",
    "train.batch_size=8",
    "train.lr=0.001",
    "train.optimizer=adamw",
    "train.weight_decay=0.0001",
    "train.grad_clip=0.1",
    "train.jitter_scale=20",
)

PRESETS = {"rlr_cpu": CPU_OVERRIDES, "uniad_cpu": UNIAD_CPU_OVERRIDES}
CPU_PRESET_OF_MODEL = {"rlr": "rlr_cpu", "uniad": "uniad_cpu"}  # what `rlr train` without --config uses on a CPU


def cpu_config(extra: tuple[str, ...] = ()) -> RunConfig:
    """The small CPU configuration, with further `key=value` overrides applied last."""
    return preset_config("rlr_cpu", extra)


def device_recipe(overrides: Sequence[str] = ()) -> tuple[RunConfig, str]:
    """The config `rlr train` uses without --config, and one line saying which it chose.

    The paper's recipe takes about 40 hours on a CPU, so the CPU gets the small one; the
    device is `train.device` after the overrides (auto: a GPU when there is one).
    """
    from rlr.engine.build import resolve_device  # the engine imports the config, not the presets

    defaults = load_config(None, overrides)
    device = resolve_device(defaults.train.device)
    if device.type == "cpu":
        preset = CPU_PRESET_OF_MODEL.get(defaults.model.name)
        if preset is None:
            return defaults, (
                f"no --config: {defaults.model.name}'s own defaults ({defaults.train.epochs} epochs) on the CPU "
                "(no small CPU recipe is built in for it)"
            )
        config = preset_config(preset, tuple(overrides))
        return config, (
            f"no --config: the small CPU recipe ({preset}, {config.train.epochs} epochs) on the CPU; "
            "--config configs/rlr_mvtec.yaml for the paper's"
        )
    return defaults, f"no --config: the paper's recipe ({defaults.train.epochs} epochs) on {device}"


def preset_config(name: str, extra: tuple[str, ...] = ()) -> RunConfig:
    """A built-in configuration by name (see PRESETS), with `key=value` overrides applied last."""
    return load_config(None, PRESETS[name] + tuple(extra))
