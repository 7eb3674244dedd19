"""rlr: unified multi-class industrial anomaly detection (RLR, ECCV 2024; UniAD baseline)."""

__version__ = "0.1.0"
