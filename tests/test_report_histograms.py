"""The report's decisions (score histograms, the calibrated threshold, confusion counts) and loss curve;
names that are not UTF-8, or hold `$`, in its figures and page (#16 case 4)."""

from __future__ import annotations

import json
import os
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlr.api import evaluate
from rlr.data.demo import generate_demo
from rlr.data.types import ImageRecord
from rlr.deploy.calibrate import calibrate
from rlr.deploy.model import Model
from rlr.engine.train import train
from rlr.features.weights import file_digest
from rlr.metrics import compute_metrics
from rlr.report.decisions import confusion_counts, score_histograms
from rlr.report.figures import heatmap_grid
from rlr.report.run import write_results
from rlr.report.text import html_text, plot_text, printable
from rlr.results import ClassResult, Thresholds

from .conftest import tiny_config

SIZE = 32
PROTOCOL = {"image_size": SIZE}
VOID = {"meta", "img", "br", "hr", "link", "input"}
raw_names = pytest.mark.skipif(
    sys.platform != "linux" or sys.getfilesystemencoding() != "utf-8", reason="needs file names stored as raw bytes"
)


def _class(folder: Path, name: str, labels: list[int], seed: int, defect: str = "scratch") -> ClassResult:
    """A class of random test images whose defective ones score higher, on disk under `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records, masks = [], np.zeros((len(labels), SIZE, SIZE), dtype=bool)
    for i, label in enumerate(labels):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path, name, label, defect if label else "good"))
        masks[i, 8:20, 10:22] = bool(label)
    maps = (masks + 0.4 * rng.random((len(labels), SIZE, SIZE))).astype(np.float32)
    scores = maps.max(axis=(1, 2)) + 0.5 * np.array(labels) * rng.random(len(labels))
    return ClassResult(records, scores, maps, masks, compute_metrics(scores, np.array(labels), maps, masks))


@pytest.fixture
def results(tmp_path) -> dict[str, ClassResult]:
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    return {name: _class(tmp_path / "data" / name, name, labels, seed) for seed, name in enumerate(("bottle", "cable"))}


def _run_folder(path: Path, epochs: int = 3) -> Path:
    """What a trained run holds for the report: last.pt (any bytes: only its digest matters) and the log."""
    path.mkdir(parents=True)
    (path / "last.pt").write_bytes(os.urandom(64))
    log = "".join(json.dumps({"epoch": e, "loss": 1.0 / e, "seconds": 0.1}) + "\n" for e in range(1, epochs + 1))
    (path / "train_log.jsonl").write_text(log)
    return path


def _calibrate(run: Path, global_threshold: float, per_class: dict[str, float], normal_dir: str | None) -> None:
    entry = {"threshold": global_threshold, "pixel_threshold": 1.0, "n_images": 5}
    payload = {
        "format": 2,
        "quantile": 0.99,
        "global": entry,
        "per_class": {name: {**entry, "threshold": t} for name, t in per_class.items()},
        "normal_dir": normal_dir,
        "checkpoint_sha256": file_digest(run / "last.pt"),
    }
    (run / "thresholds.json").write_text(json.dumps(payload))


class _Page(HTMLParser):
    """Rows of the confusion table, alt texts of the images, every paragraph's text; checks nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.confusion: list[list[str]] = []
        self.alts: list[str] = []
        self.notes: list[str] = []
        self.in_table = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "confusion":
            self.in_table = True
        if tag == "tr" and self.in_table:
            self.confusion.append([])
        if tag in ("th", "td") and self.in_table:
            self.confusion[-1].append("")
        if tag == "img":
            self.alts.append(attrs["alt"])
        if tag == "p":
            self.notes.append("")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"
        if tag == "table":
            self.in_table = False

    def handle_data(self, data):
        if self.in_table and self.confusion and self.confusion[-1] and self.stack[-1] in ("th", "td"):
            self.confusion[-1][-1] += data
        if "p" in self.stack:
            self.notes[-1] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))  # strict: the page must be valid UTF-8
    page.close()
    assert page.stack == []
    return page


def test_confusion_counts_match_counting_by_hand():
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.2, 0.7])
    labels = np.array([0, 0, 1, 1, 1, 0])
    # a score equal to the threshold is not above it: normal
    assert confusion_counts(scores, labels, 0.5) == {"TP": 1, "FP": 1, "TN": 2, "FN": 2}
    assert confusion_counts(scores, labels, 0.0) == {"TP": 3, "FP": 3, "TN": 0, "FN": 0}


def test_calibrated_report_shows_threshold_counts_histograms_and_loss(tmp_path, results):
    run = _run_folder(tmp_path / "run")
    _calibrate(run, 0.9, {"bottle": 1.1}, str(tmp_path / "normal"))
    write_results(run, results, PROTOCOL, SIZE)
    page = _parse(run / "report.html")
    header, *rows = page.confusion
    assert header == ["class", "threshold", "TP", "FP", "TN", "FN"]
    expected = {"bottle": 1.1, "cable": 0.9}  # cable has no threshold of its own: the global one
    assert [row[0] for row in rows] == list(results)
    for row in rows:
        result, threshold = results[row[0]], expected[row[0]]
        labels = np.array([r.label for r in result.records])
        flagged = result.scores > threshold
        by_hand = [(flagged & (labels > 0)).sum(), (flagged & (labels == 0)).sum()]
        by_hand += [(~flagged & (labels == 0)).sum(), (~flagged & (labels > 0)).sum()]
        assert float(row[1]) == threshold and [int(v) for v in row[2:]] == by_hand
    assert "image score histograms per class" in page.alts and "training loss per epoch" in page.alts
    assert any("normal images under" in note and str(tmp_path / "normal") in note for note in page.notes)
    assert any("3 epochs; last loss 0.333333" in note for note in page.notes)


def test_histograms_draw_the_threshold_only_when_calibrated(results):
    plain = score_histograms(results, None)
    assert plain != score_histograms(results, Thresholds(0.9))
    assert score_histograms(results, Thresholds(0.9)) != score_histograms(results, Thresholds(1.2))


def test_uncalibrated_report_says_so_and_shows_the_histograms(tmp_path, results):
    run = _run_folder(tmp_path / "run")
    write_results(run, results, PROTOCOL, SIZE)
    page = _parse(run / "report.html")
    assert page.confusion == []
    assert "image score histograms per class" in page.alts
    assert any(note.startswith("Not calibrated: run rlr calibrate RUN") for note in page.notes)


def test_stale_or_held_out_calibration_is_said_in_the_section(tmp_path, results):
    run = _run_folder(tmp_path / "run")
    _calibrate(run, 0.9, {}, None)
    (run / "last.pt").write_bytes(b"retrained")  # thresholds of the earlier checkpoint
    write_results(run, results, PROTOCOL, SIZE)
    page = _parse(run / "report.html")
    assert page.confusion == []
    assert any("No threshold shown" in n and "calibrated for another checkpoint" in n for n in page.notes)
    _calibrate(run, 0.9, {}, None)  # on the run's held-out normals, which are test images too
    write_results(run, results, PROTOCOL, SIZE)
    page = _parse(run / "report.html")
    assert len(page.confusion) == 1 + len(results)
    assert any("held-out normals" in n and "not an independent estimate" in n for n in page.notes)


def test_a_damaged_or_missing_training_log_is_named_in_the_section(tmp_path, results):
    run = _run_folder(tmp_path / "run")
    with open(run / "train_log.jsonl", "a") as log:
        log.write('{"epoch": 4, "loss": "low"}\n')
    write_results(run, results, PROTOCOL, SIZE)
    page = _parse(run / "report.html")
    assert "training loss per epoch" not in page.alts
    assert any(f"{run / 'train_log.jsonl'}: line 4 is not an epoch record" in n for n in page.notes)
    (run / "train_log.jsonl").unlink()
    write_results(run, results, PROTOCOL, SIZE)
    assert any("train_log.jsonl: not found" in n for n in _parse(run / "report.html").notes)


def test_text_for_figures_and_pages_is_printable():
    assert printable(os.fsdecode(b"cl\xffass")) == "cl\\xffass"
    assert printable("\ud800x") == "\\ud800x"  # a surrogate no file name decodes to
    assert printable("caf\u00e9 / 001.png") == "caf\u00e9 / 001.png"
    assert plot_text("a$\\x$b") == "a\\$\\x\\$b"
    assert html_text(os.fsdecode(b"<\xff>")) == "&lt;\\xff&gt;"


@raw_names
def test_names_that_are_not_utf8_or_hold_dollars_reach_figures_and_page(tmp_path):
    # #16 case 4: matplotlib refused the lone surrogates (TypeError) and parsed `$...$` as math (ValueError)
    name = os.fsdecode(b"cl\xffass")
    labels = [0, 0, 1, 1]
    folder = tmp_path / "data" / name
    result = _class(folder, name, labels, 0, defect=os.fsdecode(b"scr\xff$\\x$atch"))
    for i, record in enumerate(result.records):  # file names with the byte too
        renamed = folder / os.fsdecode(b"im\xff" + f"{i}.png".encode())
        record.image_path.rename(renamed)
        result.records[i] = ImageRecord(renamed, record.class_name, record.label, record.defect_type)
    other = _class(tmp_path / "data" / "plain", "plain", labels, 1)
    run = _run_folder(tmp_path / "run")
    _calibrate(run, 0.9, {name: 1.0}, str(tmp_path / "data"))
    write_results(run, {name: result, "plain": other}, PROTOCOL, SIZE)
    page = _parse(run / "report.html")
    assert [row[0] for row in page.confusion[1:]] == ["cl\\xffass", "plain"]
    assert "cl\\xffass" in (run / "report.html").read_text(encoding="utf-8")
    assert (run / "failures.md").is_file()
    images = [np.zeros((SIZE, SIZE, 3))]
    heatmap_grid(images, [result.masks[0]], [result.maps[0]], [f"{name} a$\\x$"], 0.0, 1.0)


@pytest.fixture(scope="module")
def calibrated_run(tiny_demo, feature_cache_dir, tmp_path_factory):
    run_dir = train(tiny_config(tiny_demo, feature_cache_dir, "train.epochs=2"), tmp_path_factory.mktemp("r") / "run")
    normal = generate_demo(tmp_path_factory.mktemp("n") / "data", seed=3, image_size=128, n_train=4, n_test_good=1)
    calibrate(Model.load(run_dir, "cpu", use_thresholds=False), normal)
    return run_dir


def test_rlr_test_after_calibrate_reports_the_counts_of_its_scores(calibrated_run):
    results = evaluate(calibrated_run, "cpu")
    thresholds = json.loads((calibrated_run / "thresholds.json").read_text())["per_class"]
    page = _parse(calibrated_run / "report.html")
    assert [row[0] for row in page.confusion[1:]] == list(results)
    for name, threshold, *counts in page.confusion[1:]:
        assert float(threshold) == pytest.approx(thresholds[name]["threshold"], rel=1e-5)
        labels = np.array([r.label for r in results[name].records])
        expected = confusion_counts(results[name].scores, labels, thresholds[name]["threshold"])
        assert [int(v) for v in counts] == list(expected.values()) and sum(expected.values()) == len(labels)
    assert "training loss per epoch" in page.alts
    assert any("2 epochs; last loss" in note for note in page.notes)
