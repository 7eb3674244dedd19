"""One-line config checks, shared by the run config and every model's own section."""

from __future__ import annotations

from typing import Any, Sequence

from rlr.errors import ConfigError


def check_choice(key: str, value: Any, known: Sequence[str]) -> None:
    """An error naming the key and the known values unless `value` is one of them."""
    if value not in known:
        raise ConfigError(f"unknown {key} '{value}' (known: {', '.join(known)})")


def check_range(
    key: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    """An error unless low <= value <= high (or < where the bound is open)."""
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must lie in {interval}, got {value!r}")


def check_per_level(key: str, values: Sequence[Any], merge: bool, out_indices: Sequence[int]) -> None:
    """A per-level list needs one entry per feature map the backbone gives (one when merged)."""
    levels = 1 if merge else len(out_indices)
    what = "merged backbone map" if merge else f"{levels} levels of backbone.out_indices"
    if len(values) != levels:
        raise ConfigError(f"{key} has {len(values)} entries but the {what} needs {levels}")
