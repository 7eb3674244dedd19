"""Atomic writes: a failure in the middle keeps the previous file whole and leaves no temp files."""

import os
import stat

import pytest

from rlr.atomic import atomic_open, write_text


def test_write_replaces_content_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_failure_while_writing_keeps_the_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    write_text(target, "good checkpoint")
    with pytest.raises(OSError, match="No space left"):
        with atomic_open(target, "w") as handle:
            handle.write("half a checkp")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
