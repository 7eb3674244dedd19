"""rlr: unified multi-class industrial anomaly detection (RLR, ECCV 2024; UniAD baseline)."""

from __future__ import annotations

from typing import Any

from rlr.version import __version__ as __version__

#: The Python API (`rlr.api`): `run = rlr.train(...)`, `rlr.test(run)`, `rlr.load(run)`.
_API = ("train", "test", "load", "Run", "Evaluation")


def __getattr__(name: str) -> Any:
    """`rlr.train`, `rlr.test`, `rlr.load`, `rlr.Run`, `rlr.Evaluation`, from `rlr.api` on first use.

    Looked up on first use, so `import rlr` stays light (no torch) and the package's root imports
    nothing that imports it back.
    """
    if name in _API:
        from rlr import api

        return getattr(api, name)
    raise AttributeError(f"module 'rlr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
