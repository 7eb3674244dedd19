"""Shared checks of exported scorers (ONNX, OpenVINO) against PyTorch, for the export tests."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

TOLERANCE = 1e-4  # max |difference| relative to the map's range, as the issues ask


def assert_parity(model, scorer, paths) -> tuple[float, float]:
    """An exported scorer's whole pipeline (its own preprocessing) vs PyTorch's, on the same files."""
    torch_results = model.predict(paths)
    exported = scorer.predict(paths, batch_size=7)
    torch_maps = np.stack([r.map for r in torch_results])
    span = torch_maps.max() - torch_maps.min()
    map_error = np.abs(np.stack([r["map"] for r in exported]) - torch_maps).max() / span
    score_error = max(abs(r["score"] - t.score) for r, t in zip(exported, torch_results)) / span
    assert map_error < TOLERANCE and score_error < TOLERANCE, (map_error, score_error)
    return map_error, score_error


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a source file imports (a copied runner must need little)."""
    tree = ast.parse(Path(path).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
