"""Failure analysis: classes ranked worst first, the weakest classes' false alarms and misses in the
report and in failures.md."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rlr.api import evaluate
from rlr.engine.train import train
from rlr.report.failures import analysed_classes, find_failures, rank_classes

from .conftest import tiny_config


@pytest.fixture(scope="module")
def tested_run(tiny_demo, feature_cache_dir, tmp_path_factory):
    run_dir = train(tiny_config(tiny_demo, feature_cache_dir), tmp_path_factory.mktemp("runs") / "tiny")
    return run_dir, evaluate(run_dir, "cpu")


def test_false_alarms_and_misses_with_their_ranks():
    scores = np.array([0.9, 0.2, 0.7, 0.1, 0.5, 0.8])
    labels = np.array([1, 0, 1, 1, 0, 0])
    failures = find_failures(scores, labels, count=2)
    # normals 5 (0.8) and 4 (0.5) score highest; 5 is above defects 2 and 3, 4 above defect 3 only
    assert [(c.index, c.rank, c.crossed) for c in failures.false_alarms] == [(5, 2, 2), (4, 4, 1)]
    # defects 3 (0.1) and 2 (0.7) score lowest; 3 is below all three normals, 2 below normal 5 only
    assert [(c.index, c.rank, c.crossed) for c in failures.misses] == [(3, 6, 3), (2, 3, 1)]
    assert (failures.n_normal, failures.n_defective) == (3, 3)
    only_normal = find_failures(np.array([0.3, 0.4]), np.array([0, 0]))
    assert only_normal.misses == [] and [c.index for c in only_normal.false_alarms] == [1, 0]


def test_classes_ranked_worst_first_and_two_analysed():
    rows = {name: {"mAD": value} for name, value in zip("abcd", (0.9, 0.5, None, 0.7))}
    assert rank_classes(rows) == ["b", "d", "a"]  # c has no defined metric: not ranked
    assert analysed_classes(rows) == ["b", "d"]
    assert analysed_classes({"x": {"mAD": 0.8}, "y": {"mAD": 0.6}}) == ["y", "x"]  # all, when at most two
    assert analysed_classes({"x": {"mAD": 0.8}}) == ["x"]


def _name(path) -> str:
    return f"{path.parent.name}/{path.name}"


def _expected(result) -> tuple[int, int]:
    """The highest-scored normal and the lowest-scored defective image, found without the library."""
    normals = [i for i, r in enumerate(result.records) if r.label == 0]
    defects = [i for i, r in enumerate(result.records) if r.label == 1]
    return max(normals, key=lambda i: result.scores[i]), min(defects, key=lambda i: result.scores[i])


def test_report_shows_the_weakest_classes_failures(tested_run):
    run_dir, results = tested_run
    per_class = json.loads((run_dir / "metrics.json").read_text())["per_class"]
    weakest = sorted(per_class, key=lambda name: (per_class[name]["mAD"], name))[:2]
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    section = page[page.index('<h2 id="failures">') : page.index("<h2>Example heatmaps</h2>")]
    ranking = re.findall(r"<tr><td>(\d+)</td><th>([^<]+)</th>", section)
    assert [name for _, name in ranking] == sorted(per_class, key=lambda name: (per_class[name]["mAD"], name))
    assert re.findall(r"<h3>([^<]+)</h3>", section) == weakest
    for name in weakest:
        part = section[section.index(f"<h3>{name}</h3>") :]
        items = re.findall(r"<li>(.*?)</li>", part)[:6]
        normal, defect = _expected(results[name])
        assert items[0].startswith(f"normal <code>{_name(results[name].records[normal].image_path)}</code>")
        assert f"<code>{_name(results[name].records[defect].image_path)}</code>" in items[3]
        rank = 1 + int((results[name].scores > results[name].scores[normal]).sum())
        assert f"rank {rank} of {len(results[name].records)}," in items[0]
    # the weakest classes' example grids moved into the failure section: one grid per class in all, beside
    # the ROC figure, the score histograms and the loss curve
    assert page.count('src="data:image/png;base64,') == 3 + len(results)


def test_failures_markdown_lists_the_same_images(tested_run):
    run_dir, results = tested_run
    text = (run_dir / "failures.md").read_text(encoding="utf-8")
    per_class = json.loads((run_dir / "metrics.json").read_text())["per_class"]
    ranked = sorted(per_class, key=lambda name: (per_class[name]["mAD"], name))
    ranking = re.findall(r"^\| (\d+) \| (\w+) \|", text, flags=re.MULTILINE)
    assert ranking == [(str(i), name) for i, name in enumerate(ranked, 1)]
    assert re.findall(r"^## (\w+)$", text, flags=re.MULTILINE) == ranked[:2]
    for name in ranked[:2]:
        part = text[text.index(f"## {name}\n") :]
        rows = re.findall(r"^\| (/\S+) \|", part, flags=re.MULTILINE)
        normal, defect = _expected(results[name])
        assert rows[0] == str(results[name].records[normal].image_path)
        assert rows[3] == str(results[name].records[defect].image_path)
    assert not list(run_dir.glob(".*.tmp"))
