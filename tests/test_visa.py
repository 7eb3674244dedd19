"""VisA: the raw release (split csv) and the MVTec-converted layout load; bad input is one line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlr.data import ANOMALOUS, NORMAL, ImageDataset, check_dataset, discover_mvtec
from rlr.data.visa import SPLIT_CSV, VISA_CLASSES, discover_visa
from rlr.errors import DataError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HEADER = "object,split,label,image,mask"
SIZE = (12, 8)
# class -> (train images, normal test images, anomalous test images). Rows are written in this
# order, so candle's rows are csv lines 2-7 (train 2-4, good 5, anomalies 6-7), pcb1's 8-12.
LAYOUT = {"candle": (3, 1, 2), "pcb1": (2, 2, 1)}


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _mask(value: int) -> Image.Image:
    """VisA marks defect pixels with small labels (1..N), not 255: here the top-left quarter."""
    array = np.zeros(SIZE[::-1], dtype=np.uint8)
    array[: SIZE[1] // 2, : SIZE[0] // 2] = value
    return Image.fromarray(array)


def make_visa(root: Path) -> Path:
    rows = [HEADER]
    for name, (n_train, n_good, n_bad) in LAYOUT.items():
        for i in range(n_train + n_good):
            image = f"{name}/Data/Images/Normal/{i:04d}.JPG"
            _save(root / image, Image.new("RGB", SIZE, (20 * i, 0, 0)))
            rows.append(f"{name},{'train' if i < n_train else 'test'},normal,{image},")
        for i in range(n_bad):
            image = f"{name}/Data/Images/Anomaly/{i:03d}.JPG"
            mask = f"{name}/Data/Masks/Anomaly/{i:03d}.png"
            _save(root / image, Image.new("RGB", SIZE, (0, 20 * i, 0)))
            _save(root / mask, _mask(i + 1))
            rows.append(f"{name},test,anomaly,{image},{mask}")
    (root / "split_csv").mkdir()
    (root / SPLIT_CSV).write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def visa(tmp_path: Path) -> Path:
    return make_visa(tmp_path / "visa")


def _edit_row(root: Path, line: int, edit) -> None:
    lines = (root / SPLIT_CSV).read_text().splitlines()
    lines[line - 1] = edit(lines[line - 1])
    (root / SPLIT_CSV).write_text("\n".join(lines) + "\n")


def _raises(prefix: Path | str, problem: str) -> pytest.RaisesExc:
    """Expect a one-line DataError whose message starts with `prefix: ` and mentions `problem`."""
    pattern = rf"^{re.escape(str(prefix))}: .*{re.escape(problem)}[^\n]*$"
    return pytest.raises(DataError, match=pattern)


# --- discovery -------------------------------------------------------------------------------


def test_the_twelve_visa_classes() -> None:
    assert len(set(VISA_CLASSES)) == 12 and VISA_CLASSES == tuple(sorted(VISA_CLASSES))
    assert {"candle", "chewinggum", "macaroni2", "pcb4", "pipe_fryum"} <= set(VISA_CLASSES)


def test_discovery_counts_and_labels(visa: Path) -> None:
    split = discover_visa(visa)
    assert split.root == visa and split.class_names == ["candle", "pcb1"]
    for name, (n_train, n_good, n_bad) in LAYOUT.items():
        train = [r for r in split.train if r.class_name == name]
        assert len(train) == n_train and all(r.label == NORMAL for r in train)
        test = split.test[name]
        assert sum(r.label == NORMAL and r.defect_type == "good" for r in test) == n_good
        assert sum(r.label == ANOMALOUS and r.defect_type == "bad" for r in test) == n_bad
        assert len(test) == n_good + n_bad


def test_masks_paired_and_label_values_binarised(visa: Path) -> None:
    split = discover_visa(visa)
    assert all(r.mask_path is None for r in split.train)
    test = [r for name in split.class_names for r in split.test[name]]
    for record in test:
        if record.label == NORMAL:
            assert record.mask_path is None
        else:
            masks = visa / record.class_name / "Data" / "Masks" / "Anomaly"
            assert record.mask_path == masks / f"{record.image_path.stem}.png"
    anomalies = [r for r in test if r.label == ANOMALOUS]
    for sample in ImageDataset(anomalies, 8):  # mask values 1 and 2 both mean "defect"
        assert set(sample["mask"].unique().tolist()) == {0.0, 1.0}
        assert sample["mask"].mean().item() == pytest.approx(0.25)


def test_class_selection(visa: Path) -> None:
    split = discover_visa(visa, classes=["pcb1"])
    assert split.class_names == ["pcb1"] and list(split.test) == ["pcb1"]
    assert {r.class_name for r in split.train} == {"pcb1"}
    assert discover_visa(visa, classes="candle").class_names == ["candle"]
    assert discover_visa(visa, classes=["pcb1", "candle"]).class_names == ["pcb1", "candle"]


def test_class_not_in_the_csv_is_unknown(visa: Path) -> None:
    (visa / "capsules" / "Data").mkdir(parents=True)  # on disk, but the csv has no rows for it
    with _raises(visa / SPLIT_CSV, "unknown class(es) capsules; available: candle, pcb1"):
        discover_visa(visa, classes=["candle", "capsules"])


# --- bad input: one line naming the csv (with its line) or the file --------------------------


@pytest.mark.parametrize(
    "line,edit,problem",
    [
        (2, lambda row: row.replace(",train,", ",val,"), "unknown split 'val'"),
        (5, lambda row: row.replace(",normal,", ",defect,"), "unknown label 'defect'"),
        (6, lambda row: row.rsplit(",", 1)[0] + ",", "anomaly without a mask path"),
        (6, lambda row: row.replace(",test,", ",train,"), "anomaly in the train split"),
        (5, lambda row: row + "candle/0.png", "mask path given for a normal image"),
        (3, lambda row: row + ",extra", "6 fields, expected 5"),
        (4, lambda row: ",train,normal,candle/Data/Images/Normal/0002.JPG,", "no class name"),
    ],
)
def test_bad_row(visa: Path, line: int, edit, problem: str) -> None:
    _edit_row(visa, line, edit)
    with _raises(f"{visa / SPLIT_CSV}:{line}", problem):
        discover_visa(visa)


def test_missing_csv(visa: Path) -> None:
    (visa / SPLIT_CSV).unlink()
    with _raises(visa / SPLIT_CSV, "split file not found"):
        discover_visa(visa)


@pytest.mark.parametrize(
    "text,prefix,problem",
    [
        ("object,split,label,image\n", ":1", "unexpected header 'object,split,label,image'"),
        ("", "", "empty file (expected the header object,split,label,image,mask)"),
        (HEADER + "\n", "", "no usable rows"),
    ],
)
def test_bad_csv_file(visa: Path, text: str, prefix: str, problem: str) -> None:
    (visa / SPLIT_CSV).write_text(text)
    with _raises(f"{visa / SPLIT_CSV}{prefix}", problem):
        discover_visa(visa)


def test_csv_not_utf8(visa: Path) -> None:
    (visa / SPLIT_CSV).write_bytes(HEADER.encode() + b"\ncandle,train,normal,\xff\xfe.JPG,\n")
    with _raises(visa / SPLIT_CSV, "not a UTF-8 text file"):
        discover_visa(visa)


def test_row_naming_a_missing_image(visa: Path) -> None:
    image = visa / "candle" / "Data" / "Images" / "Normal" / "0001.JPG"
    image.unlink()
    with _raises(image, f"file not found (listed at {visa / SPLIT_CSV}:3)"):
        discover_visa(visa)


def test_row_naming_a_missing_mask(visa: Path) -> None:
    mask = visa / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    with _raises(mask, f"file not found (listed at {visa / SPLIT_CSV}:7)"):
        discover_visa(visa)


def test_row_naming_a_non_image(visa: Path) -> None:
    (visa / "candle" / "notes.txt").write_text("x")
    _edit_row(visa, 2, lambda row: "candle,train,normal,candle/notes.txt,")
    with _raises(visa / "candle" / "notes.txt", "not an image file"):
        discover_visa(visa)


def test_image_listed_twice(visa: Path) -> None:
    _edit_row(visa, 3, lambda row: "candle,train,normal,candle/Data/Images/Normal/0000.JPG,")
    image = visa / "candle" / "Data" / "Images" / "Normal" / "0000.JPG"
    with _raises(image, f"listed twice ({visa / SPLIT_CSV}:2 and :3)"):
        discover_visa(visa)


def test_class_folder_missing(visa: Path) -> None:
    shutil.rmtree(visa / "pcb1")
    with _raises(visa / "pcb1", f"class folder not found (listed in {visa / SPLIT_CSV})"):
        discover_visa(visa)
    assert discover_visa(visa, classes=["candle"]).class_names == ["candle"]


def test_class_without_train_rows(visa: Path) -> None:
    for line in (8, 9):
        _edit_row(visa, line, lambda row: row.replace(",train,", ",test,"))
    with _raises(visa / SPLIT_CSV, "empty class 'pcb1' (no train rows)"):
        discover_visa(visa)


def test_missing_root(tmp_path: Path) -> None:
    with _raises(tmp_path / "nowhere", "dataset root not found"):
        discover_visa(tmp_path / "nowhere")


def test_problems_can_be_collected(visa: Path) -> None:
    (visa / "candle" / "Data" / "Images" / "Normal" / "0001.JPG").unlink()
    _edit_row(visa, 12, lambda row: row.replace(",test,", ",val,"))
    found: list[DataError] = []
    split = discover_visa(visa, on_problem=found.append)
    assert [str(p).split(": ")[0] for p in found] == [  # rows are read before files
        f"{visa / SPLIT_CSV}:12",
        str(visa / "candle" / "Data" / "Images" / "Normal" / "0001.JPG"),
    ]
    assert len(split.train) == 4 and len(split.test["pcb1"]) == 2


# --- rlr data check ------------------------------------------------------------------------


def test_check_reads_the_raw_layout(visa: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlr.cli import main

    report = check_dataset(visa)
    assert report.ok and report.warnings == []
    counts = {s.name: (s.train, s.test_good, s.defective) for s in report.classes}
    assert counts == {"candle": (3, 1, 2), "pcb1": (2, 2, 1)}
    candle = report.classes[0]
    assert candle.defect_counts == {"bad": 2} and candle.mask_coverage == {"bad": 0.25}
    assert main(["data", "check", str(visa)]) == 0
    assert "OK: 0 problem(s)" in capsys.readouterr().out


def test_check_lists_problems_and_unlisted_files(visa: Path) -> None:
    missing = visa / "pcb1" / "Data" / "Images" / "Normal" / "0000.JPG"
    missing.unlink()
    extra = _save(visa / "candle" / "Data" / "Images" / "Normal" / "9.JPG", Image.new("RGB", SIZE))
    (visa / "candle" / "image_anno.csv").write_text("image,label,mask\n")  # the release has one
    (visa / "scans").mkdir()
    report = check_dataset(visa)
    assert len(report.problems) == 1 and report.problems[0].startswith(f"{missing}: file not found")
    unlisted = f"not listed in {visa / SPLIT_CSV}; ignored"
    assert sorted(report.warnings) == sorted([f"{extra}: {unlisted}", f"{visa / 'scans'}: {unlisted}"])


# --- the MVTec-converted layout --------------------------------------------------------------


def _convert(raw: Path, out: Path) -> Path:
    """Lay the raw tree out as VisA's own converter does: test/bad, ground_truth/bad/<stem>.png."""
    split = discover_visa(raw)
    for record in split.train + [r for name in split.class_names for r in split.test[name]]:
        folder = "train" if record in split.train else "test"
        kind = "good" if record.label == NORMAL else "bad"
        for source, target in (
            (record.image_path, out / record.class_name / folder / kind),
            (record.mask_path, out / record.class_name / "ground_truth" / kind),
        ):
            if source is not None:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
    return out


def test_converted_layout_loads_as_mvtec(visa: Path, tmp_path: Path) -> None:
    converted = _convert(visa, tmp_path / "converted")
    raw, mvtec = discover_visa(visa), discover_mvtec(converted)
    assert mvtec.class_names == raw.class_names and len(mvtec.train) == len(raw.train)
    for name in raw.class_names:
        labels = sorted((r.label, r.defect_type) for r in mvtec.test[name])
        assert labels == sorted((r.label, r.defect_type) for r in raw.test[name])
        masks = converted / name / "ground_truth" / "bad"
        for record in mvtec.test[name]:
            expected = masks / f"{record.image_path.stem}.png" if record.label == ANOMALOUS else None
            assert record.mask_path == expected
    assert check_dataset(converted).ok


# --- config ----------------------------------------------------------------------------------


def test_visa_config_builds_the_split(visa: Path) -> None:
    from rlr.config import load_config
    from rlr.engine.build import build_split

    config = load_config(CONFIGS / "rlr_visa.yaml", [f"data.root={visa}"])
    assert (config.name, config.data.format) == ("rlr_visa", "visa")
    assert build_split(config).class_names == ["candle", "pcb1"]
    config = load_config(CONFIGS / "rlr_visa.yaml", [f"data.root={visa}", "data.classes=[pcb1]"])
    assert [r.class_name for r in build_split(config).train] == ["pcb1", "pcb1"]
