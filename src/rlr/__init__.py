"""rlr: unified multi-class industrial anomaly detection (RLR, ECCV 2024; UniAD baseline)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlr.inference import Model

__version__ = "0.1.0"


def load(run_dir: str | os.PathLike, device: str | None = None) -> Model:
    """A trained run ready to score images: `rlr.load(run).predict(path)` (see rlr.inference).

    Imported on first use, so `import rlr` stays light.
    """
    from rlr.inference import load as _load

    return _load(run_dir, device)
