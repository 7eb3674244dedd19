"""One-line config checks, shared by the run config and every model's own section."""

from __future__ import annotations

import math
import types
from typing import Any, Sequence, Union, get_args, get_origin

from rlr.errors import ConfigError


def _shown(value: Any) -> str:
    """A value as an error message shows it: its repr, cut short (a YAML list can be huge)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_type(key: str, value: Any, hint: Any) -> Any:
    """`value` as the annotated type `hint` (str, int, float, bool, list[...], X | None), or an error naming `key`.

    Conversions: a whole float (2.0) to int, an int to float, a number to str; nothing else.
    Floats must be finite: no setting means anything at nan or inf.
    """
    if get_origin(hint) in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return check_type(key, value, inner)
    if get_origin(hint) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {_shown(value)}")
        (item,) = get_args(hint)
        return [check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and number and (isinstance(value, int) or (math.isfinite(value) and value.is_integer())):
        return int(value)
    if hint is float and number and _finite(value):
        return float(value)
    if hint is str and (isinstance(value, str) or number):
        return str(value)
    expected = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}
    if hint not in expected:
        raise TypeError(f"{key}: no check for type {hint!r}")
    raise ConfigError(f"{key} must be {expected[hint]}, got {_shown(value)}")


def check_min(key: str, value: float, low: float) -> None:
    """An error unless value >= low (counts, sizes and widths that cannot be zero or negative)."""
    if value < low:
        raise ConfigError(f"{key} must be at least {low:g}, got {_shown(value)}")


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


def check_attention(section: Any) -> None:
    """The keys every attention model's section shares: positive sizes, widths the heads divide, dropout < 1."""
    for key in ("num_layers", "num_heads", "ffn_ratio"):
        check_min(f"model.{key}", getattr(section, key), 1)
    for width in section.hidden_dims:
        check_min("model.hidden_dims", width, 1)
        if width % section.num_heads:
            raise ConfigError(
                f"model.hidden_dims: width {width} is not divisible by model.num_heads={section.num_heads}"
            )
    check_range("model.dropout", section.dropout, 0.0, 1.0, high_open=True)


def check_window(key: str, window: int) -> None:
    """An attention window or neighbourhood: a positive odd size, so it is centred on its token."""
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"{key} must be a positive odd number, got {_shown(window)}")
