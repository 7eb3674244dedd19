"""Carve test normals out of the training normals, for data that has none (own folders).

Without normal test images a class has no image-level metrics and no held-out images to
calibrate on. `data.normal_test_ratio` moves that share of a class's good images from training
to its test set. The choice depends only on the class's sorted file list, the ratio and
`data.split_seed`, so training, `rlr test` and `rlr calibrate` all see the same split, and the
run's config records everything needed to repeat it.
"""

from __future__ import annotations

import random

from rlr.data.split import DatasetSplit
from rlr.data.types import NORMAL, ImageRecord
from rlr.errors import DataError


def hold_out_normals(split: DatasetSplit, ratio: float, seed: int) -> DatasetSplit:
    """`split` with `ratio` of each class's training images moved to its test set, for the
    classes whose test set holds no normal image; others are left as they are."""
    if ratio <= 0:
        return split
    held: set[ImageRecord] = set()
    test = {name: list(records) for name, records in split.test.items()}
    for name in split.class_names:
        if any(record.label == NORMAL for record in test[name]):
            continue
        own = sorted((r for r in split.train if r.class_name == name), key=lambda r: str(r.image_path))
        count = max(1, round(ratio * len(own)))
        if count >= len(own):
            raise DataError(
                f"{split.root}: class '{name}' has {len(own)} good image(s): too few to hold out "
                f"data.normal_test_ratio={ratio:g} of them and still train"
            )
        chosen = random.Random(f"{seed}/{name}").sample(own, count)
        held.update(chosen)
        test[name] = sorted(chosen, key=lambda r: str(r.image_path)) + test[name]
    train = [record for record in split.train if record not in held]
    return DatasetSplit(root=split.root, class_names=split.class_names, train=train, test=test)
