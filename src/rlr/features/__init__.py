"""Frozen backbone features: weights resolution, extraction and the on-disk cache."""
