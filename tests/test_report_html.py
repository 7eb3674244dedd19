"""The HTML report: self-contained, complete, escaped, atomic; optionally rendered by Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlr.data.types import ImageRecord
from rlr.metrics import METRIC_NAMES, compute_metrics, mean_over_classes
from rlr.report.figures import pick_examples, roc_curve
from rlr.report.html import worst_classes, write_html_report
from rlr.results import ClassResult

SIZE = 32
PROTOCOL = {"image_size": SIZE, "mask_resize": "nearest neighbour", "checkpoint": "last epoch"}
ODD_NAME = "screw<&>"  # only normal images: every metric undefined; also checks escaping
VOID = {"meta", "img", "br", "hr", "link", "input"}


def _class(root: Path, name: str, labels: list[int], rng: np.random.Generator, separable: bool) -> ClassResult:
    folder = root / name.replace("<", "").replace("&", "").replace(">", "")
    folder.mkdir(parents=True)
    records, masks = [], np.zeros((len(labels), SIZE, SIZE), dtype=bool)
    for i, label in enumerate(labels):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path, name, label, "scratch" if label else "good"))
        if label:
            masks[i, 8:20, 10:22] = True
    noise = rng.random((len(labels), SIZE, SIZE)).astype(np.float32)
    maps = (masks + 0.3 * noise).astype(np.float32) if separable else noise
    scores = maps.max(axis=(1, 2)) + (np.array(labels) if separable else 0)
    return ClassResult(records, scores, maps, masks, compute_metrics(scores, np.array(labels), maps, masks))


@pytest.fixture
def results(tmp_path) -> dict[str, ClassResult]:
    rng = np.random.default_rng(0)
    mixed = [0, 0, 0, 1, 1, 1]
    return {
        "bottle": _class(tmp_path / "data", "bottle", mixed, rng, separable=True),
        "cable": _class(tmp_path / "data", "cable", mixed, rng, separable=False),
        ODD_NAME: _class(tmp_path / "data", ODD_NAME, [0, 0, 0], rng, separable=False),
    }


@pytest.fixture
def report(tmp_path, results) -> Path:
    mean = mean_over_classes({name: r.metrics for name, r in results.items()})
    return write_html_report(tmp_path / "run", results, mean, PROTOCOL, SIZE, examples_per_class=3)


class _Page(HTMLParser):
    """Collects the metric table's rows, image sources and every attribute; checks nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.rows: list[tuple[dict, list[str]]] = []
        self.images: list[str] = []
        self.attributes: list[str] = []
        self.in_metrics = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.attributes += [v or "" for v in attrs.values()]
        if tag == "table" and attrs.get("id") == "metrics":
            self.in_metrics = True
        if tag == "tr" and self.in_metrics:
            self.rows.append((attrs, []))
        if tag in ("th", "td") and self.in_metrics:
            self.rows[-1][1].append("")
        if tag == "img":
            self.images.append(attrs["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"
        if tag == "table":
            self.in_metrics = False

    def handle_data(self, data):
        if self.in_metrics and self.rows and self.rows[-1][1] and self.stack[-1] in ("th", "td", "span"):
            self.rows[-1][1][-1] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


def test_report_is_complete_and_self_contained(report, results):
    text = report.read_text(encoding="utf-8")
    page = _parse(report)
    header, *body = [cells for _, cells in page.rows]
    assert header == ["class", *METRIC_NAMES, "mAD"]
    assert [cells[0].removesuffix("worst") for cells in body] == [*results, "mean"]
    assert all(key in text for key in PROTOCOL)
    assert len(page.images) == 1 + len(results)  # the ROC figure and one grid per class
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in page.images)
    assert "http://" not in text and "https://" not in text
    assert not any(a.startswith(("http", "//")) for a in page.attributes)
    assert report.stat().st_size < 300_000


def test_worst_class_marked_and_undefined_metrics_shown(report, results):
    page = _parse(report)
    rows = {cells[0].removesuffix("worst"): (attrs, cells) for attrs, cells in page.rows[1:]}
    assert worst_classes({n: r.metrics for n, r in results.items()}) == ["cable"]
    assert rows["cable"][0].get("class") == "worst" and rows["cable"][1][0] == "cableworst"
    assert rows["bottle"][0].get("class") is None
    assert rows[ODD_NAME][1][1:] == ["n/a"] * (len(METRIC_NAMES) + 1)
    assert rows["bottle"][1][1] == "100.0"  # I-AUROC, percent with one decimal
    text = report.read_text(encoding="utf-8")
    assert "screw&lt;&amp;&gt;" in text and ODD_NAME not in text
    assert "No ROC curve" in text


def test_write_is_atomic(report, tmp_path, results):
    write_html_report(report.parent, results, {}, PROTOCOL, SIZE)  # replace it, mean all n/a
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.html"]
    assert "<tfoot><tr><th>mean</th>" + "<td>n/a</td>" * (len(METRIC_NAMES) + 1) in report.read_text()


def test_worst_rule():
    rows = {name: {"mAD": value} for name, value in zip("abcde", (0.9, 0.5, None, 0.7, 0.95))}
    assert worst_classes(rows) == ["b", "d"]
    assert worst_classes({"a": {"mAD": 0.5}}) == []


def test_roc_curve_is_exact_with_ties():
    fpr, tpr = roc_curve(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 1, 0, 0]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert roc_curve(np.array([0.2, 0.3]), np.array([0, 0])) is None


def test_examples_prefer_informative_images():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    labels = np.array([0, 1, 1, 0, 1])
    assert pick_examples(scores, labels, 4) == [1, 4, 3, 2]
    assert pick_examples(scores, labels, 10) == [1, 4, 3, 2, 0]


def _chromium() -> str | None:
    candidate = os.environ.get("RLR_CHROMIUM", "/usr/bin/chromium")
    return candidate if Path(candidate).is_file() else shutil.which(candidate)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium: install /usr/bin/chromium or set RLR_CHROMIUM to a binary")
    flags = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", url], capture_output=True, timeout=120)
    assert shot.is_file(), "Chromium wrote no screenshot"
    assert np.asarray(Image.open(shot).convert("L"), dtype=np.float32).var() > 0
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert '<table id="metrics">' in dom and "<tfoot>" in dom
    assert dom.count('src="data:image/png;base64,') == 4
