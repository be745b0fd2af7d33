"""The one atomic-write helper: a kill never leaves a half-written target, and what a killed
writer left beside it is cleared by the next write of the same target."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cache.atomic import _HOST, atomic_write


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write(target, "old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "last.pt"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    orphan = tmp_path / f"last.pt.{_HOST}.{finished.pid}.tmp"  # what a SIGKILL mid-write leaves
    orphan.write_text("half")
    live = tmp_path / f"last.pt.{_HOST}.{os.getpid()}.tmp.npy"  # a running writer's
    elsewhere = tmp_path / f"last.pt.other-host.{finished.pid}.tmp"  # cannot be asked: kept
    for kept in (live, elsewhere):
        kept.write_text("in progress")
    atomic_write(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not orphan.exists() and live.exists() and elsewhere.exists()
