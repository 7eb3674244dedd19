"""Accept/reject thresholds from held-out NORMAL images only, stored in the run as thresholds.json.

Method: the threshold is the q-quantile of the image scores of normal images (default q = 0.99,
or q = 1 - target false-positive rate), taken with numpy's 'higher' rule, so it is always one of
the observed scores and at most a fraction 1 - q of the calibration images lies above it. An
image is anomalous when its score is strictly greater than the threshold. The pixel threshold
(`rlr predict --masks`) is the same rule over every pixel of those images' anomaly maps
(default q = 0.999: one normal pixel in a thousand is marked). One threshold per class that has
its own normal images, and a global one over all of them; a class without its own threshold
uses the global one. No test label is ever read.

Which normal images: those under a folder (`--normal DIR`), minus any the model was trained on
(their scores run low, which would put the thresholds too low; each is left out, with one line
saying how many). Without a folder, the normals the run's own split held out of training
(`data.normal_test_ratio`), exactly those and no others.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rlr.atomic import write_text
from rlr.config import RunConfig
from rlr.deploy.inputs import images_under
from rlr.deploy.model import Model
from rlr.deploy.thresholds import (
    DEFAULT_PIXEL_QUANTILE,
    INTERPOLATION,
    NORMALISED_SCORE,
    THRESHOLDS_FORMAT,
    THRESHOLDS_NAME,
    check_quantile,
    quantile_threshold,
    resolve_quantile,
)
from rlr.engine.build import build_split
from rlr.errors import ConfigError, DataError, RlrError

HELD_OUT = "held-out normals of the run's split (data.normal_test_ratio)"


def normal_folders(normal_dir: Path, class_names: list[str]) -> dict[str | None, Path]:
    """Which folder holds each class's normal images; {None: normal_dir} when no class folder exists.

    A class folder is `<dir>/<class>/train/good` (MVTec layout) or `<dir>/<class>/good` (own data)
    when that exists, else `<dir>/<class>/`.
    """
    if not normal_dir.is_dir():
        raise DataError(f"{normal_dir}: normal image folder not found")
    folders: dict[str | None, Path] = {}
    for name in class_names:
        folder = normal_dir / name
        if (folder / "train" / "good").is_dir():
            folders[name] = folder / "train" / "good"
        elif (folder / "good").is_dir():
            folders[name] = folder / "good"
        elif folder.is_dir():
            folders[name] = folder
    return folders or {None: normal_dir}


def held_out_normals(config: RunConfig) -> dict[str, list[Path]]:
    """Per class, the good images `data.normal_test_ratio` moved from training to the test set
    (classes that had test normals of their own keep all their good images in training)."""
    split = build_split(config)
    unsplit = build_split(dataclasses.replace(config, data=dataclasses.replace(config.data, normal_test_ratio=0.0)))
    trainable = {r.image_path for r in unsplit.train}  # the test images among these were moved
    held = {name: [r.image_path for r in split.test[name] if r.image_path in trainable] for name in split.class_names}
    return {name: paths for name, paths in held.items() if paths}


def calibration_images(model: Model, normal_dir: Path | None) -> tuple[dict[str | None, list[Path]], int | None]:
    """The images to calibrate on per class (None: no class) and how many training images were left out
    (None: the training set could not be listed to check)."""
    if normal_dir is None:
        held = held_out_normals(model.config)
        if not held:
            ratio = model.config.data.normal_test_ratio
            why = "is 0" if ratio <= 0 else f"is {ratio:g}, but every class has normal test images of its own"
            raise ConfigError(
                f"{model.run_dir}: no --normal folder given, and the run holds out no normal images "
                f"(data.normal_test_ratio {why}): give --normal DIR with normal images the model never saw"
            )
        return held, 0
    folders = normal_folders(normal_dir, model.class_names)
    images = {name: images_under(folder) for name, folder in folders.items()}
    for name, files in images.items():
        if not files:
            raise DataError(f"{folders[name]}: no image files found for calibration")
    trained = _training_images(model)
    if trained is None:
        return images, None
    kept = {name: [p for p in files if p.resolve() not in trained] for name, files in images.items()}
    for name, files in kept.items():
        if not files:
            raise DataError(
                f"{folders[name]}: all {len(images[name])} normal images were used for training: calibrate on "
                "normal images the model never saw (without --normal: the run's held-out normals, "
                "data.normal_test_ratio)"
            )
    left_out = sum(len(images[name]) - len(files) for name, files in kept.items())
    if left_out:
        print(
            f"rlr: calibrate: left out {left_out} of the normal images under {normal_dir}: the model was trained "
            "on them (their scores run low)",
            file=sys.stderr,
        )
    return kept, left_out


def _training_images(model: Model) -> set[Path] | None:
    """The run's training images (resolved); None, said in one line, when its dataset cannot be listed."""
    try:
        return {Path(r.image_path).resolve() for r in build_split(model.config).train}
    except RlrError as error:
        print(
            f"rlr: warning: cannot check whether the normal images were used for training ({error}); "
            "calibrate on images the model never saw",
            file=sys.stderr,
        )
        return None


def calibrate(
    model: Model,
    normal_dir: str | Path | None = None,
    quantile: float | None = None,
    fpr: float | None = None,
    batch_size: int | None = None,
    pixel_quantile: float | None = None,
) -> dict:
    """Score the normal images, write `thresholds.json` into the model's run and return its content.

    `normal_dir` None: the run's held-out normals. Stops at the first unreadable image (fix it or
    move it away: a threshold from a partial set would be silently different).
    """
    q = resolve_quantile(quantile, fpr)
    pixel_q = check_quantile("pixel quantile", DEFAULT_PIXEL_QUANTILE if pixel_quantile is None else pixel_quantile)
    normal_dir = None if normal_dir is None else Path(normal_dir)
    images, left_out = calibration_images(model, normal_dir)
    scores: dict[str | None, np.ndarray] = {}
    pixels: dict[str | None, np.ndarray] = {}
    for name, files in images.items():
        results = model.predict(files, batch_size=batch_size, progress=f"calibrate {name or 'all'}")
        scores[name] = np.array([r.score for r in results])
        pixels[name] = np.concatenate([r.map.ravel() for r in results])
    every = np.concatenate(list(scores.values()))
    per_class = {name: _summary(s, pixels[name], q, pixel_q) for name, s in scores.items() if name is not None}
    payload = {
        "format": THRESHOLDS_FORMAT,
        "method": "quantile of normal image scores",
        "quantile": q,
        "target_false_positive_rate": 1.0 - q,
        "pixel_method": "quantile of every pixel of the normal images' anomaly maps (at data.image_size)",
        "pixel_quantile": pixel_q,
        "interpolation": f"numpy '{INTERPOLATION}' (an observed score)",
        "decision": "anomalous when score > threshold; a mask pixel is defect when its map value > pixel_threshold",
        "normalised_score": NORMALISED_SCORE,
        "score": model.score_description,
        "global": _summary(every, np.concatenate(list(pixels.values())), q, pixel_q),
        "per_class": per_class,
        "normal_images": HELD_OUT if normal_dir is None else "folder",
        "normal_dir": None if normal_dir is None else str(normal_dir.resolve()),
        "training_images_left_out": left_out,
        "checkpoint_sha256": model.checkpoint_digest,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if len(every) * (1.0 - q) < 1.0:
        print(
            f"rlr: warning: {len(every)} normal images are too few for quantile {q:g}: "
            "the threshold is their maximum score",
            file=sys.stderr,
        )
    write_text(Path(model.run_dir) / THRESHOLDS_NAME, json.dumps(payload, indent=2) + "\n")
    return payload


def _summary(scores: np.ndarray, pixels: np.ndarray, q: float, pixel_q: float) -> dict:
    return {
        "threshold": quantile_threshold(scores, q),
        "pixel_threshold": quantile_threshold(pixels, pixel_q),
        "n_images": len(scores),
        "min_score": float(scores.min()),
        "max_score": float(scores.max()),
    }
