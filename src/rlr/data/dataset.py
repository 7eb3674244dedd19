"""A torch Dataset over listed records: decodes each sample only when it is asked for."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from rlr.data.transforms import load_mask, read_image, resize_image, to_tensor
from rlr.data.types import ImageRecord, Sample


class ImageDataset(Dataset):
    """Returns `Sample`s: the image resized to (3, S, S), its mask (1, S, S), label, class, path.

    Both are placed in the square by the same `resize` rule (`data.resize`), so they stay aligned.

    A record without a mask gets an all-zero mask. A mask is checked against its image's own
    size (after EXIF orientation) before both are resized, so misaligned masks fail loudly.
    """

    def __init__(self, records: list[ImageRecord], image_size: int, resize: str = "stretch") -> None:
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.records = list(records)
        self.image_size = image_size
        self.resize = resize

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        size = self.image_size
        image = read_image(record.image_path)
        pixels = resize_image(to_tensor(image, record.image_path), size, self.resize)
        if record.mask_path is None:
            mask = torch.zeros(1, size, size)
        else:
            mask = load_mask(record.mask_path, size, expected_size=image.size, mode=self.resize)
        return Sample(
            image=pixels,
            mask=mask,
            label=record.label,
            class_name=record.class_name,
            path=str(record.image_path),
        )
