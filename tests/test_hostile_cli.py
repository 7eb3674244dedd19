"""Hostile command-line inputs (issue #16): bad sizes refused before any work, output names that cannot clash."""

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


def test_output_names_stay_unique_when_stems_and_full_names_clash(tmp_path):
    # case 12: a.png, a.jpg and a.png.png once mapped two files to the overlay a.png.png
    from rlr.deploy.predict import output_names

    files = [tmp_path / n for n in ("a.png", "a.jpg", "a.png.png", "b.png")]
    names = output_names(files)
    assert len(set(names.values())) == len(files)
    assert names[tmp_path / "b.png"].name == "b"
