"""Own data as plain folders: several classes named by their folders, one folder of good images,
test normals held out of the good images, and `rlr data check` on both forms."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from rlr.cli import main
from rlr.config import load_config
from rlr.data.check import check_dataset
from rlr.data.folder import scan_class_folders
from rlr.data.types import ANOMALOUS, NORMAL
from rlr.engine.build import build_split
from rlr.errors import ConfigError, DataError
from tests.conftest import TINY

CLASSES = ("brick", "grass", "gravel")


def own_data(demo: Path, root: Path) -> Path:
    """Three classes from the demo set: brick with flat masks/, grass with masks/<defect>/, gravel without masks.

    Only the training images become good/: the test normals must come from data.normal_test_ratio.
    """
    for name in CLASSES:
        shutil.copytree(demo / name / "train" / "good", root / name / "good")
        for defect_dir in sorted((demo / name / "test").iterdir()):
            if defect_dir.name == "good":
                continue
            for image in sorted(defect_dir.iterdir()):
                stem = f"{defect_dir.name}_{image.stem}"  # flat masks/ needs stems unique across defects
                (root / name / defect_dir.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, root / name / defect_dir.name / f"{stem}.png")
                mask = demo / name / "ground_truth" / defect_dir.name / f"{image.stem}_mask.png"
                if name == "brick":
                    target = root / name / "masks" / f"{stem}_mask.png"
                elif name == "grass":
                    target = root / name / "masks" / defect_dir.name / f"{stem}.png"
                else:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(mask, target)
    return root


def folder_config(root: Path, *extra: str):
    return load_config(None, ["data.format=folder", f"data.root={root}", *extra])


def test_classes_defects_and_masks_come_from_the_folders(tiny_demo, tmp_path):
    root = own_data(tiny_demo, tmp_path / "own")
    split = scan_class_folders(root)
    assert split.class_names == list(CLASSES)
    assert {r.class_name for r in split.train} == set(CLASSES)
    assert all(r.label == NORMAL for r in split.train)
    for name in CLASSES:
        defects = {d.name for d in (tiny_demo / name / "test").iterdir()} - {"good"}
        assert {r.defect_type for r in split.test[name]} == defects
        assert all(r.label == ANOMALOUS for r in split.test[name])
    masked = {name: [r.mask_path is not None for r in split.test[name]] for name in CLASSES}
    assert all(masked["brick"]) and all(masked["grass"]) and not any(masked["gravel"])
    grass = split.test["grass"][0]
    assert grass.mask_path.parent.name == grass.defect_type  # masks/<defect>/
    assert scan_class_folders(root, ["gravel", "brick"]).class_names == ["gravel", "brick"]


def test_one_folder_of_good_images_is_one_class_named_after_it(tiny_demo, tmp_path):
    good = shutil.copytree(tiny_demo / "brick" / "train" / "good", tmp_path / "widgets")
    split = build_split(folder_config(good, "data.normal_test_ratio=0.5"))
    assert split.class_names == ["widgets"]
    assert len(split.train) == 3 and len(split.test["widgets"]) == 3
    assert all(r.label == NORMAL for r in split.test["widgets"])


def test_held_out_normals_are_seeded_disjoint_and_repeatable(tiny_demo, tmp_path):
    root = own_data(tiny_demo, tmp_path / "own")
    first = build_split(folder_config(root, "data.normal_test_ratio=0.34"))
    again = build_split(folder_config(root, "data.normal_test_ratio=0.34"))
    other = build_split(folder_config(root, "data.normal_test_ratio=0.34", "data.split_seed=5"))
    held = {r.image_path for name in CLASSES for r in first.test[name] if r.label == NORMAL}
    assert len(held) == 2 * len(CLASSES)  # round(0.34 * 6) per class
    assert held.isdisjoint(r.image_path for r in first.train)
    assert len(first.train) + len(held) == 6 * len(CLASSES)
    assert first == again
    assert held != {r.image_path for name in CLASSES for r in other.test[name] if r.label == NORMAL}
    assert len(build_split(folder_config(root)).train) == 6 * len(CLASSES)  # ratio 0: nothing held out


def test_classes_with_test_normals_keep_them(tiny_demo):
    config = load_config(None, [f"data.root={tiny_demo}", "data.normal_test_ratio=0.5"])
    assert len(build_split(config).train) == len(build_split(load_config(None, [f"data.root={tiny_demo}"])).train)


def test_bad_own_data_is_one_line(tiny_demo, tmp_path):
    root = own_data(tiny_demo, tmp_path / "own")
    with pytest.raises(DataError, match="too few to hold out"):
        build_split(folder_config(root, "data.normal_test_ratio=0.99"))
    with pytest.raises(ConfigError, match="data.normal_test_ratio must lie in"):
        folder_config(root, "data.normal_test_ratio=1")
    with pytest.raises(ConfigError, match="data.format=folder needs data.root"):
        build_split(load_config(None, ["data.format=folder"]))
    with pytest.raises(DataError, match="no classes found"):
        scan_class_folders(root / "brick")  # a class folder, not a root
    (root / "brick" / "masks" / "hole_000_mask.png").rename(root / "brick" / "masks" / "000.png")
    (root / "brick" / "scratch" / "scratch_000.png").rename(root / "brick" / "scratch" / "000.png")
    (root / "brick" / "hole" / "hole_000.png").rename(root / "brick" / "hole" / "000.png")
    with pytest.raises(DataError, match="mask of both"):
        scan_class_folders(root)


def test_data_check_reads_own_data(tiny_demo, tmp_path, capsys):
    root = own_data(tiny_demo, tmp_path / "own")
    (root / "notes").mkdir()
    report = check_dataset(root, workers=1)
    assert report.ok, report.problems
    assert [c.name for c in report.classes] == list(CLASSES)
    assert [c.train for c in report.classes] == [6, 6, 6]
    assert report.classes[0].defect_counts == {"contamination": 2, "hole": 2, "scratch": 2}  # brick
    assert any("notes: folder is not a class" in w for w in report.warnings)
    (root / "gravel" / "readme.txt").write_text("x")
    for image in (root / "grass" / "good").iterdir():
        image.unlink()
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "readme.txt: unexpected file" in out and "empty class 'grass'" in out
    assert check_dataset(root / "brick" / "good", workers=1).classes[0].name == "good"


def test_own_classes_through_check_train_test_calibrate_predict(tiny_demo, tmp_path, feature_cache_dir, capsys):
    root = own_data(tiny_demo, tmp_path / "own")
    run = tmp_path / "run"
    assert main(["data", "check", str(root)]) == 0
    overrides = [f"--{item}" for item in TINY if not item.startswith("train.epochs")]
    assert (
        main(
            [
                "train",
                "--run-dir",
                str(run),
                "--train.device",
                "cpu",  # no --config: the CPU recipe
                "--data.format",
                "folder",
                "--data.root",
                str(root),
                "--data.normal_test_ratio",
                "0.34",
                "--train.cache_dir",
                str(feature_cache_dir),
                "--train.epochs",
                "1",
                *overrides,
            ]
        )
        == 0
    )
    assert "the small CPU recipe" in capsys.readouterr().out
    assert load_config(run / "config.yaml").name == "rlr_cpu"
    assert main(["test", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["per_class"]) == list(CLASSES)
    assert metrics["protocol"]["normal_test_ratio"] == 0.34
    assert all(metrics["per_class"][name]["I-AUROC"] is not None for name in CLASSES)
    with open(run / "scores.csv", newline="") as handle:
        scored = list(csv.DictReader(handle))
    assert {row["class"] for row in scored} == set(CLASSES)
    assert len(scored) == len(CLASSES) * (2 + 6)  # 2 held-out normals + 3 defect kinds x 2 per class

    assert main(["calibrate", str(run), "--normal", str(root)]) == 0
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert set(thresholds["per_class"]) == set(CLASSES)
    capsys.readouterr()
    defect = next(d for d in sorted((root / "gravel").iterdir()) if d.name != "good")
    assert (
        main(
            [
                "predict",
                str(run),
                str(defect),
                str(root / "brick" / "good"),
                "--out",
                str(tmp_path / "pred"),
                "--no-overlays",
            ]
        )
        == 0
    )
    with open(tmp_path / "pred" / "predictions.csv", newline="") as handle:
        predicted = list(csv.DictReader(handle))
    assert {row["class"] for row in predicted} == {"gravel", "brick"}
    assert all(row["decision"] in ("normal", "anomalous") for row in predicted)
