"""`rlr data check ROOT`: decode a whole dataset and report every problem at once.

ROOT is read as the raw VisA release when it holds VisA's split csv, as own data when it holds
images or `<class>/good/` folders (the folder format), else in the MVTec AD layout.

Unlike discovery, which stops at the first problem, the check walks everything, so one run
tells a user all that must be fixed. Problems (unreadable files, missing or misaligned masks)
make training impossible or wrong; warnings (empty defect masks, stray masks or folders) are
worth knowing but can be real properties of a dataset.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rlr.data.folder import GOOD, is_class_folders, scan_class_folders
from rlr.data.mvtec import find_classes, scan_mvtec
from rlr.data.split import DatasetSplit, is_image_file, list_entries, list_images
from rlr.data.transforms import read_image, read_mask, to_tensor
from rlr.data.types import NORMAL, ImageRecord
from rlr.data.visa import DATA_FOLDERS, SPLIT_CSV, discover_visa, is_visa
from rlr.errors import DataError


@dataclass
class ClassStats:
    """Counts for one class; mask coverage is the mean fraction of positive pixels per mask."""

    name: str
    train: int = 0
    test_good: int = 0
    defect_counts: dict[str, int] = field(default_factory=dict)
    mask_coverage: dict[str, float] = field(default_factory=dict)  # types with a readable mask
    empty_masks: list[str] = field(default_factory=list)

    @property
    def defective(self) -> int:
        return sum(self.defect_counts.values())


@dataclass
class CheckReport:
    """Everything `check_dataset` found; the CLI fails when `problems` is not empty."""

    root: Path
    classes: list[ClassStats] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Inspection:
    problems: list[str]
    coverage: float | None = None  # fraction of positive mask pixels, where the mask was read


def _inspect(record: ImageRecord) -> _Inspection:
    """Decode one image (and its mask) as training would; collect what goes wrong."""
    problems = []
    image_size = None
    try:
        image = read_image(record.image_path)
        to_tensor(image, record.image_path)
        image_size = image.size
    except DataError as error:
        problems.append(str(error))
    if record.mask_path is None:
        return _Inspection(problems)
    try:
        mask = read_mask(record.mask_path)
    except DataError as error:
        return _Inspection(problems + [str(error)])
    height, width = mask.shape
    if image_size is not None and image_size != (width, height):
        problems.append(
            f"{record.mask_path}: mask size {width}x{height} differs from its image's size "
            f"{image_size[0]}x{image_size[1]} ({record.image_path})"
        )
    return _Inspection(problems, float(mask.mean()))


def _stray_masks(root: Path, name: str, records: list[ImageRecord]) -> list[str]:
    """Masks under ground_truth/ that belong to no test image: harmless, likely a mix-up."""
    used = {record.mask_path for record in records}
    ground_truth = root / name / "ground_truth"
    strays = []
    for type_dir in list_entries(ground_truth, lambda _: None) if ground_truth.is_dir() else []:
        if type_dir.is_dir():  # non-image files there are reported by the scan
            strays += [m for m in list_images(type_dir, lambda _: None) if m not in used]
    return [f"{mask}: mask without a matching test image" for mask in strays]


def _unlisted_visa(split: DatasetSplit) -> list[str]:
    """VisA folders and files that its split csv does not name: training never sees them."""
    records = split.train + [record for name in split.class_names for record in split.test[name]]
    listed = {record.image_path for record in records} | {record.mask_path for record in records}
    known = {*split.class_names, SPLIT_CSV.parts[0]}
    skipped = [e for e in list_entries(split.root) if e.is_dir() and e.name not in known]
    for name in split.class_names:
        for folder in (split.root / name / data for data in DATA_FOLDERS):
            entries = list_entries(folder, lambda _: None) if folder.is_dir() else []
            skipped += [entry for entry in entries if entry not in listed]
    return [f"{path}: not listed in {split.root / SPLIT_CSV}; ignored" for path in skipped]


def check_dataset(root: str | os.PathLike, workers: int | None = None) -> CheckReport:
    """Walk and decode every image and mask under `root`; collect all problems and stats.

    `workers` threads decode in parallel (default: one per CPU; Pillow releases the GIL).
    """
    root = Path(root)
    report = CheckReport(root=root)
    found: list[DataError] = []
    try:
        if is_visa(root):
            split = discover_visa(root, on_problem=found.append)
            ignored = _unlisted_visa(split)
        elif root.is_dir() and is_class_folders(root):
            split = scan_class_folders(root, on_problem=found.append)
            entries = list_entries(root)
            one_class = any(is_image_file(entry) for entry in entries)  # its folders are problems
            ignored = [
                f"{entry}: folder is not a class (no {GOOD}/ inside); ignored"
                for entry in entries
                if not one_class and entry.is_dir() and entry.name not in split.class_names
            ]
        else:
            split = scan_mvtec(root, on_problem=found.append)
            classes = find_classes(root)
            ignored = [
                f"{entry}: folder is not a class (no train/ or test/ inside); ignored"
                for entry in list_entries(root)
                if entry.is_dir() and entry.name not in classes
            ]
    except DataError as error:
        report.problems.append(str(error))
        return report
    report.problems += [str(problem) for problem in found]
    report.warnings += ignored

    records = split.train + [record for name in split.class_names for record in split.test[name]]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        inspections = list(pool.map(_inspect, records))

    stats = {name: ClassStats(name) for name in split.class_names}
    coverages: dict[tuple[str, str], list[float]] = {}
    for position, (record, inspection) in enumerate(zip(records, inspections)):
        report.problems += inspection.problems
        class_stats = stats[record.class_name]
        if position < len(split.train):
            class_stats.train += 1
        elif record.label == NORMAL:
            class_stats.test_good += 1
        else:
            defect = record.defect_type
            class_stats.defect_counts[defect] = class_stats.defect_counts.get(defect, 0) + 1
            if inspection.coverage is not None:
                coverages.setdefault((record.class_name, defect), []).append(inspection.coverage)
            if inspection.coverage == 0.0:
                class_stats.empty_masks.append(str(record.mask_path))
                report.warnings.append(f"{record.mask_path}: empty mask (all zero) of a '{defect}' defect image")
    for (name, defect), values in coverages.items():
        stats[name].mask_coverage[defect] = sum(values) / len(values)
    for name in split.class_names:
        report.warnings += _stray_masks(root, name, split.test[name])
    report.classes = [stats[name] for name in split.class_names]
    return report


def format_check_report(report: CheckReport) -> str:
    """Plain text ending in a newline: a row per class, defect types, problems, warnings."""
    header = f"{'class':<20} {'train':>7} {'test good':>10} {'defective':>10} {'empty masks':>12}"
    lines = [f"Dataset check: {report.root}", "", header, "-" * len(header)]
    for stats in report.classes:
        lines.append(
            f"{stats.name:<20} {stats.train:>7} {stats.test_good:>10} "
            f"{stats.defective:>10} {len(stats.empty_masks):>12}"
        )
    if report.classes:
        lines += ["", f"{'defect type':<36} {'images':>7} {'mask coverage':>14}"]
        for stats in report.classes:
            for defect, count in sorted(stats.defect_counts.items()):
                coverage = stats.mask_coverage.get(defect)
                shown = "-" if coverage is None else f"{coverage:.2%}"
                lines.append(f"{stats.name + '/' + defect:<36} {count:>7} {shown:>14}")
    for title, items in (("Problems", report.problems), ("Warnings", report.warnings)):
        lines += ["", f"{title} ({len(items)}):"] + [f"  {item}" for item in items or ["none"]]
    verdict = "OK" if report.ok else "FAILED"
    counts = f"{len(report.problems)} problem(s), {len(report.warnings)} warning(s)"
    lines += ["", f"{verdict}: {counts}"]
    return "\n".join(lines) + "\n"
