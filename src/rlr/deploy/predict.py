"""`rlr predict`: score files, folders and globs; write a CSV, heatmap overlays, raw maps and defect masks.

A file that cannot be read is reported and skipped; every other file is still scored and written,
and the caller learns about the skipped ones (the CLI exits non-zero after listing them).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from rlr.atomic import atomic_open
from rlr.deploy.model import Model
from rlr.deploy.overlay import annotated_overlay, display_image
from rlr.deploy.thresholds import THRESHOLDS_NAME, normalised_score, read_calibration, read_pixel_thresholds
from rlr.errors import ConfigError, DataError
from rlr.results import PredictionResult, Thresholds

CSV_NAME = "predictions.csv"
# New columns go last, so readers of the earlier columns by position keep working.
CSV_COLUMNS = ("path", "class", "score", "threshold", "decision", "overlay", "map", "normalised_score", "mask")


@dataclass
class PredictSummary:
    """What `predict_files` wrote, and the one-line problem of every file it skipped."""

    csv_path: Path
    scored: int
    anomalous: int
    problems: list[str]


def output_names(files: Sequence[Path]) -> dict[Path, Path]:
    """Unique names for each file's outputs: its path below the folder holding all inputs, without
    the extension (`good/001`), or with it where the short name would clash with another file's
    (`a.png`, `a.jpg` and `a.png.png` keep their extensions)."""
    if not files:
        return {}
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    relative = [r.relative_to(common) for r in resolved]
    full = dict(zip(files, relative))
    names = {f: r.with_suffix("") for f, r in full.items()}
    while True:  # a stem that clashes with any other name becomes its full name (those are unique)
        counts = Counter(names.values())
        clashing = [f for f, name in names.items() if counts[name] > 1 and name != full[f]]
        if not clashing:
            return names
        for f in clashing:
            names[f] = full[f]


def mask_thresholds(model: Model) -> Thresholds:
    """The run's pixel thresholds for `--masks`; a one-line error when `rlr calibrate` has not made them."""
    run_dir = Path(model.run_dir)
    pixel = read_pixel_thresholds(run_dir, model.checkpoint_digest)
    if pixel is not None:
        return pixel
    if read_calibration(run_dir, model.checkpoint_digest) is None:
        raise ConfigError(
            f"{run_dir}: not calibrated: --masks needs a pixel threshold, run `rlr calibrate {run_dir}` first"
        )
    raise ConfigError(
        f"{run_dir / THRESHOLDS_NAME}: has no pixel threshold (written by an earlier rlr calibrate): "
        f"run `rlr calibrate {run_dir}` again for --masks"
    )


def defect_mask(result: PredictionResult, pixel_threshold: float) -> Image.Image:
    """255 where the map, put back onto the input's own pixels (`map_at_original_size`), exceeds the threshold."""
    return Image.fromarray(np.where(result.map_at_original_size() > pixel_threshold, 255, 0).astype(np.uint8))


@dataclass(frozen=True)
class _Outputs:
    """Where and which files each result gets besides its CSV row."""

    out_dir: Path
    overlays: bool
    save_maps: bool
    full_size_maps: bool
    pixel_thresholds: Thresholds | None  # None: no masks


def predict_files(
    model: Model,
    files: Sequence[Path],
    out_dir: Path,
    class_name: str | None = None,
    overlays: bool = True,
    save_maps: bool = False,
    full_size_maps: bool = False,
    batch_size: int | None = None,
    masks: bool = False,
) -> PredictSummary:
    """Score `files` and write `predictions.csv` (+ overlays/, maps/, masks/) into `out_dir`.

    Outputs mirror the inputs' folders (see `output_names`). Overlays and masks are at each
    image's own resolution; maps (.npy, float32) at the model's image size, or at the image's own
    size with `full_size_maps`. `masks` needs the run's calibrated pixel threshold (checked
    before anything is scored). Unreadable files are skipped and listed.
    """
    out_dir = Path(out_dir)
    outputs = _Outputs(out_dir, overlays, save_maps, full_size_maps, mask_thresholds(model) if masks else None)
    names = output_names(files)
    step = batch_size or model.config.eval.batch_size
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    with tqdm(total=len(files), desc="predict", unit="img") as bar:
        for start in range(0, len(files), step):
            prepared = []
            for path in files[start : start + step]:
                try:
                    prepared.append(model.prepare(path))
                except DataError as error:
                    problems.append(str(error))
            for result in model.predict_prepared(prepared, class_name, step):
                name = names[Path(result.path)]
                try:
                    rows.append(_write_outputs(result, name, outputs))
                except DataError as error:
                    problems.append(str(error))
            bar.update(min(step, len(files) - start))
    csv_path = out_dir / CSV_NAME
    with atomic_open(csv_path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    anomalous = sum(row["decision"] == "anomalous" for row in rows)
    return PredictSummary(csv_path, len(rows), anomalous, problems)


def _write_outputs(result: PredictionResult, name: Path, outputs: _Outputs) -> dict[str, str]:
    out_dir = outputs.out_dir
    normalised = normalised_score(result.score, result.threshold)
    row = {
        "path": str(result.path),
        "class": result.class_name or "",
        "score": f"{result.score:.6g}",
        "threshold": "" if result.threshold is None else f"{result.threshold:.6g}",
        "decision": result.decision,
        "overlay": "",
        "map": "",
        "normalised_score": "" if normalised is None else f"{normalised:.6g}",
        "mask": "",
    }
    if outputs.overlays:
        target = out_dir / "overlays" / f"{name}.png"
        with atomic_open(target, "wb") as handle:
            annotated_overlay(result, display_image(result.path)).save(handle, format="PNG")
        row["overlay"] = str(target.relative_to(out_dir))
    if outputs.save_maps:
        target = out_dir / "maps" / f"{name}.npy"
        with atomic_open(target, "wb") as handle:
            np.save(handle, result.map_at_original_size() if outputs.full_size_maps else result.map)
        row["map"] = str(target.relative_to(out_dir))
    if outputs.pixel_thresholds is not None:
        target = out_dir / "masks" / f"{name}.png"
        with atomic_open(target, "wb") as handle:
            defect_mask(result, outputs.pixel_thresholds.for_class(result.class_name)).save(handle, format="PNG")
        row["mask"] = str(target.relative_to(out_dir))
    return row
