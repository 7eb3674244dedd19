"""Score new images with a trained run: `model = rlr.load(run_dir); model.predict(images)`.

The pipeline is the one `rlr test` runs: the image is read and resized by `load_image`'s rules
(its aspect ratio as `data.resize` says; stretching a far-from-square image is warned about
once), the anomaly map is computed at `data.image_size`, the image score follows the run's scoring rule
(RLR: the max after a Gaussian filter, `eval.image_score_sigma`) and the returned map is smoothed
as the pixel metrics use it (`eval.pixel_map_sigma`). One difference: `rlr test` reads backbone
features from the float16 feature cache, `predict` computes them in float32, so the two agree to
a few 1e-4 of the map's range, not bit for bit. Rounding to float16 here would make them equal, but the ONNX export would
then differ wherever the two runtimes' features fall on opposite sides of a rounding boundary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from tqdm import tqdm

from rlr.config import RunConfig
from rlr.data.transforms import StretchWarning, read_image, resize_image, to_tensor
from rlr.deploy.thresholds import read_thresholds
from rlr.engine.build import build_extractor, build_split, resolve_device, scoring_rule
from rlr.engine.evaluate import load_run
from rlr.engine.runs import CHECKPOINT_NAME
from rlr.errors import RlrError
from rlr.features.backbone import FeatureExtractor
from rlr.features.weights import file_digest
from rlr.results import PredictionResult, Thresholds
from rlr.scoring import ScoringRule

#: What `predict` accepts as one image: a file path, a PIL image, a uint8 numpy array (H, W) or
#: (H, W, 3), or a float tensor (3, H, W) with values in [0, 1].
ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


class Scorer(nn.Module):
    """Images (B, 3, S, S) in [0, 1] -> (pixel maps (B, S, S), image scores (B,)): the whole scorer.

    One module, so the PyTorch path and the ONNX export compute the same graph.
    """

    def __init__(self, extractor: FeatureExtractor, model: nn.Module, image_size: int, rule: ScoringRule) -> None:
        super().__init__()
        self.extractor = extractor
        self.model = model
        self.image_size = image_size
        self.rule = rule

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.extractor(images)
        raw = self.rule.raw_maps(features, self.model(features), self.image_size)
        return self.rule.pixel_maps(raw), self.rule.image_scores(raw)


@dataclass
class PreparedImage:
    """One input resized for the model, with what is needed to map results back onto it."""

    pixels: torch.Tensor  # (3, S, S) float32 in [0, 1]
    original_size: tuple[int, int]  # (width, height) as read, EXIF orientation applied
    path: str | None = None


class Model:
    """A trained run ready to score images: frozen, in eval mode, gradients never computed."""

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        scorer: Scorer,
        device: torch.device,
        thresholds: Thresholds | None,
        checkpoint_digest: str,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.scorer = scorer
        self.device = device
        self.thresholds = thresholds
        self.checkpoint_digest = checkpoint_digest
        self.class_names = _class_names(config, thresholds)
        self._stretch_warning = StretchWarning(config.data.resize)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str | None = None, use_thresholds: bool = True) -> Model:
        """Load the run's last checkpoint (and its thresholds.json unless `use_thresholds` is False)."""
        run_dir = Path(run_dir)
        config, reconstructor, _ = load_run(run_dir)
        digest = file_digest(run_dir / CHECKPOINT_NAME)
        thresholds = read_thresholds(run_dir, digest) if use_thresholds else None
        target = resolve_device(device or config.train.device)
        scorer = Scorer(build_extractor(config), reconstructor, config.data.image_size, scoring_rule(config))
        scorer.requires_grad_(False).eval().to(target)
        return cls(run_dir, config, scorer, target, thresholds, digest)

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    @property
    def score_description(self) -> str:
        return str(self.scorer.rule.describe()["image_score"])

    def threshold_for(self, class_name: str | None) -> float | None:
        """The per-class threshold when there is one, else the global one; None when not calibrated."""
        return None if self.thresholds is None else self.thresholds.for_class(class_name)

    def class_of(self, path: str | os.PathLike) -> str | None:
        """The class of a file inside the run's dataset (`<root>/<class>/...`); None elsewhere."""
        data = self.config.data
        if data.format == "folder" and data.train_dir:  # one class from explicit folders
            return self.config.name
        if not data.root:
            return None
        root = Path(data.root).resolve()
        try:
            parts = Path(path).resolve().relative_to(root).parts
        except ValueError:
            return None
        if data.format == "folder" and len(parts) == 1 and root.name in self.class_names:
            return root.name  # own data as one folder of good images
        return parts[0] if len(parts) > 1 and parts[0] in self.class_names else None

    def prepare(self, image: ImageInput) -> PreparedImage:
        """Read and resize one input the way `rlr test` does; a bad file raises a one-line DataError."""
        if isinstance(image, (str, os.PathLike)):
            pixels = to_tensor(read_image(image), image)
            path: str | None = str(image)
        elif isinstance(image, Image.Image):
            pixels, path = to_tensor(ImageOps.exif_transpose(image), "<image>"), None
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise TypeError(f"numpy images must be uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}")
            pixels, path = to_tensor(Image.fromarray(image), "<array>"), None
        elif isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] not in (1, 3) or not image.is_floating_point():
                raise TypeError(f"tensor images must be float (3, H, W) in [0, 1], got {tuple(image.shape)}")
            pixels, path = image.detach().float().cpu(), None
        else:
            raise TypeError(f"cannot predict on a {type(image).__name__}: give a path, PIL image, array or tensor")
        height, width = (int(side) for side in pixels.shape[-2:])
        self._stretch_warning.check(width, height, path or f"<{type(image).__name__}>")
        resized = resize_image(pixels, self.image_size, self.config.data.resize)
        return PreparedImage(resized, (width, height), path)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        class_name: str | None = None,
        batch_size: int | None = None,
        progress: str | None = None,
    ) -> PredictionResult | list[PredictionResult]:
        """Score one image (-> one result) or a batch (a list, or a (B, 3, H, W) tensor -> a list).

        `class_name` picks the per-class threshold for every image; without it, a file inside
        the run's dataset gets its class from its path and anything else the global threshold.
        Images are read `batch_size` at a time (default eval.batch_size), so a long list of
        files never sits in memory at once. `progress` labels a progress bar (None: no bar).
        """
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, torch.Tensor) and images.ndim == 4)
        items = [images] if single else list(images)  # type: ignore[arg-type]
        step = batch_size or self.config.eval.batch_size
        results: list[PredictionResult] = []
        with tqdm(total=len(items), desc=progress, unit="img", leave=False, disable=progress is None) as bar:
            for start in range(0, len(items), step):
                chunk = [self.prepare(item) for item in items[start : start + step]]
                results.extend(self.predict_prepared(chunk, class_name, step))
                bar.update(len(chunk))
        return results[0] if single else results

    @torch.inference_mode()
    def predict_prepared(
        self, prepared: Sequence[PreparedImage], class_name: str | None = None, batch_size: int | None = None
    ) -> list[PredictionResult]:
        """Score images already read by `prepare`, `batch_size` per forward pass (default eval.batch_size)."""
        step = batch_size or self.config.eval.batch_size
        results: list[PredictionResult] = []
        for start in range(0, len(prepared), step):
            chunk = prepared[start : start + step]
            maps, scores = self.scorer(torch.stack([p.pixels for p in chunk]).to(self.device))
            for item, amap, score in zip(chunk, maps.cpu().numpy(), scores.cpu().tolist()):
                name = class_name or (self.class_of(item.path) if item.path else None)
                threshold = self.threshold_for(name)
                results.append(
                    PredictionResult(
                        score, amap, threshold, name, item.original_size, item.path, self.config.data.resize
                    )
                )
        return results


def load(run_dir: str | os.PathLike, device: str | None = None) -> Model:
    """Load a trained run for scoring new images (`device`: None = the run's setting, 'cpu', 'cuda')."""
    return Model.load(run_dir, device)


def _class_names(config: RunConfig, thresholds: Thresholds | None) -> list[str]:
    """The run's classes: from the config, else from its dataset root when that still exists."""
    if config.data.format == "folder" and config.data.train_dir:
        names = [config.name]
    elif config.data.classes:
        names = list(config.data.classes)
    else:
        try:
            names = build_split(config).class_names if config.data.root else []
        except RlrError:
            names = []
    extra = sorted(set(thresholds.per_class) - set(names)) if thresholds else []
    return names + extra
