"""Hostile command-line values refused in one line before any work (issue #16, case 13)."""

import pytest

from rlr.cli import main


@pytest.mark.parametrize("command", ["predict", "calibrate"])
@pytest.mark.parametrize("size", ["0", "-1"])
def test_non_positive_batch_size_is_refused_before_loading(command, size, tmp_path, capsys):
    # the run does not exist: the batch size must be refused before the run is even read
    target = ["img.png"] if command == "predict" else ["--normal", str(tmp_path)]
    assert main([command, str(tmp_path / "no-run"), *target, "--batch-size", size]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rlr: error: --batch-size must be at least 1, got {size}"
