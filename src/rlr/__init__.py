"""rlr: unified multi-class industrial anomaly detection (RLR, ECCV 2024; UniAD baseline)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`rlr.load(run_dir, device=None)`: a trained run ready to score images (`rlr.deploy.model.load`).

    Looked up on first use, so `import rlr` stays light (no torch) and the package's root imports
    nothing that imports it back.
    """
    if name == "load":
        from rlr.deploy.model import load

        return load
    raise AttributeError(f"module 'rlr' has no attribute {name!r}")
