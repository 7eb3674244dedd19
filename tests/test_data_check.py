"""`rlr data check`: every planted problem is listed, empty masks are warnings, stats add up."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlr.data import check_dataset, format_check_report

REALMINI = Path(os.environ.get("RLR_REALMINI") or Path(__file__).resolve().parents[2] / "shared/data/realmini")


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _quarter_mask(size: tuple[int, int]) -> Image.Image:
    array = np.zeros(size[::-1], dtype=np.uint8)
    array[: size[1] // 2, : size[0] // 2] = 255
    return Image.fromarray(array)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A valid two-class tree: 'pen' (2 train, 1 good, 2 'ink'), 'cap' (1 train, 1 'chip')."""
    size = (8, 6)
    for name, n_train in (("pen", 2), ("cap", 1)):
        for i in range(n_train):
            _save(tmp_path / name / "train" / "good" / f"{i}.png", Image.new("RGB", size))
    _save(tmp_path / "pen" / "test" / "good" / "0.png", Image.new("RGB", size))
    for name, defect, count in (("pen", "ink", 2), ("cap", "chip", 1)):
        for i in range(count):
            _save(tmp_path / name / "test" / defect / f"{i}.png", Image.new("RGB", size))
            _save(tmp_path / name / "ground_truth" / defect / f"{i}_mask.png", _quarter_mask(size))
    return tmp_path


def test_clean_tree_passes_with_stats(tree: Path) -> None:
    report = check_dataset(tree)
    assert report.ok and report.problems == [] and report.warnings == []
    stats = {s.name: s for s in report.classes}
    assert [s.name for s in report.classes] == ["cap", "pen"]
    assert (stats["pen"].train, stats["pen"].test_good, stats["pen"].defective) == (2, 1, 2)
    assert (stats["cap"].train, stats["cap"].test_good, stats["cap"].defective) == (1, 0, 1)
    assert stats["pen"].defect_counts == {"ink": 2}
    assert stats["pen"].mask_coverage == {"ink": pytest.approx(0.25)}


def test_all_planted_problems_are_listed(tree: Path) -> None:
    truncated = tree / "pen" / "train" / "good" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    notes = tree / "pen" / "train" / "good" / "notes.txt"
    notes.write_text("x")
    fake = tree / "pen" / "test" / "good" / "0.png"
    fake.write_text("not an image")
    unmasked = tree / "pen" / "test" / "ink" / "1.png"
    (tree / "pen" / "ground_truth" / "ink" / "1_mask.png").unlink()
    misfit = _save(tree / "cap" / "ground_truth" / "chip" / "0_mask.png", Image.new("L", (3, 3)))
    empty = tree / "cap" / "train" / "good" / "1.png"
    empty.touch()

    report = check_dataset(tree)
    planted = {
        truncated: "truncated or corrupt image",
        notes: "not an image file",
        fake: "not an image file",
        unmasked: "defect image without its mask",
        misfit: "mask size 3x3 differs from its image's size 8x6",
        empty: "empty file (0 bytes)",
    }
    assert len(report.problems) == len(planted), report.problems
    for path, problem in planted.items():
        assert any(p.startswith(f"{path}: ") and problem in p for p in report.problems), path
    assert not report.ok
    assert "FAILED: 6 problem(s)" in format_check_report(report)


def test_empty_mask_is_a_warning_not_a_problem(tree: Path) -> None:
    mask = _save(tree / "pen" / "ground_truth" / "ink" / "1_mask.png", Image.new("L", (8, 6)))
    report = check_dataset(tree)
    assert report.ok
    assert len(report.warnings) == 1 and report.warnings[0].startswith(f"{mask}: empty mask")
    pen = next(s for s in report.classes if s.name == "pen")
    assert pen.empty_masks == [str(mask)]
    assert pen.mask_coverage["ink"] == pytest.approx(0.125)  # (0.25 + 0) / 2


def test_stray_masks_and_folders_are_warnings(tree: Path) -> None:
    stray = _save(tree / "pen" / "ground_truth" / "ink" / "9_mask.png", Image.new("L", (8, 6)))
    (tree / "scans").mkdir()
    report = check_dataset(tree)
    assert report.ok
    stray_warning = f"{stray}: mask without a matching test image"
    assert any(w.startswith(stray_warning) for w in report.warnings)
    assert any(w.startswith(f"{tree / 'scans'}: folder is not a class") for w in report.warnings)


def test_missing_root_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    report = check_dataset(tmp_path / "nowhere")
    assert report.problems == [f"{tmp_path / 'nowhere'}: dataset root not found"]
    assert "FAILED" in format_check_report(report)


def test_report_text_has_a_row_per_class(tree: Path) -> None:
    text = format_check_report(check_dataset(tree))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["pen"] == ["2", "1", "2", "0"] and rows["cap"] == ["1", "0", "1", "0"]
    assert "pen/ink" in text and "25.00%" in text and text.rstrip().endswith("0 warning(s)")


@pytest.mark.realmini
def test_realmini_counts() -> None:
    if not REALMINI.is_dir():
        pytest.skip(f"realmini data not found at {REALMINI} (set RLR_REALMINI to its path)")
    report = check_dataset(REALMINI)
    assert report.problems == []
    counts = {s.name: (s.train, s.test_good, s.defective) for s in report.classes}
    assert counts == {
        "bottle": (209, 20, 63),
        "metal_plate": (53, 27, 71),
        "magnetic_tile": (761, 191, 392),
    }
    empty = {s.name: len(s.empty_masks) for s in report.classes}
    assert empty == {"bottle": 0, "metal_plate": 0, "magnetic_tile": 4}
    assert len(report.warnings) == 4
