"""Concurrency: two writers on one stage group (the second is refused, the first is unharmed),
readers (`cache status`, `eval`) while writers run, and sharded workers (`--shard i/n`) over
disjoint rows of the same groups, whose result equals a single worker's bitwise. Two real
writers racing and eval during training run in `make soak`."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from cache import Shard, WorkDir
from cli.common import features
from heads.config import RunConfig, TrainSettings
from heads.modules import HeadSettings
from heads.run_dir import RunDir
from heads.train import train
from pipeline.settings import PipelineSettings, StageGroups
from tests.conftest import tcd_process
from tests.reliability.harness import assert_same, cache_arrays

ENCODE = ("encode", "-q", "--workers", "0")


def wait_for_rows(work: Path, stage: str, *procs, timeout: float = 120) -> None:
    """Until one of the running `procs` has written a row of `stage`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        groups = [g for g in WorkDir(work).stages() if g.stage == stage]
        if groups and groups[0].counts()["done"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{stage} never wrote a row: {[p.communicate() for p in procs]}")


def finish(proc) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    return out


def one_line_error(proc) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err and err.count("\n") == 1, out + err
    return err


def _eval_or_one_line_error(work: Path) -> int:
    """Run `tcd eval`; it must succeed or stop with one `error:` line (e.g. no checkpoint yet,
    features not encoded yet), never a traceback. Returns its exit code."""
    proc = tcd_process("eval", "--work", str(work), "--run", "r")
    out, err = proc.communicate(timeout=120)
    if proc.returncode:
        assert proc.returncode == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    return proc.returncode


def test_a_second_writer_is_refused_while_readers_read(encoded, tmp_path):
    before, _ = encoded
    work = Path(shutil.copytree(before, tmp_path / "work"))
    with StageGroups.resolve(WorkDir(work), PipelineSettings()).frames.writing():
        second = tcd_process(*ENCODE[:1], "--work", str(work), *ENCODE[1:])
        status = tcd_process("cache", "status", "--work", str(work))
        err = one_line_error(second)
        assert "is in use by another process" in err and f"pid {os.getpid()}" in err
        assert "frames" in finish(status)


@pytest.mark.soak
def test_two_writers_started_together_never_corrupt(encoded, tmp_path):
    before, reference = encoded
    work = Path(shutil.copytree(before, tmp_path / "work"))
    # whichever meets a lock held by the other is refused; the other goes on
    writers = [tcd_process(*ENCODE[:1], "--work", str(work), *ENCODE[1:]) for _ in range(2)]
    wait_for_rows(work, "frames", *writers)
    status = tcd_process("cache", "status", "--work", str(work))  # a reader meanwhile
    assert "frames" in finish(status)
    codes = []
    for proc in writers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 or "is in use by another process" in err, out + err
        assert "Traceback" not in err
        codes.append(proc.returncode)
    assert 0 in codes
    finish(tcd_process(*ENCODE[:1], "--work", str(work), *ENCODE[1:]))  # the user's rerun
    assert_same(cache_arrays(work), cache_arrays(reference))


@pytest.mark.soak
def test_eval_while_the_run_trains(encoded, tmp_path):
    """`tcd eval` during `tcd train` of the same run: checkpoints are replaced under it."""
    _, reference = encoded
    work = Path(shutil.copytree(reference, tmp_path / "work"))
    trainer = tcd_process(
        "train", "--work", str(work), "--config", "configs/tcd.toml", "--name", "r",
        "--set", "train.epochs=8", "--set", "train.patience=99", "--set", "train.batch_size=4",
    )  # fmt: skip
    succeeded = 0
    while trainer.poll() is None:
        succeeded += _eval_or_one_line_error(work) == 0
    finish(trainer)
    assert succeeded >= 1  # evaluated a checkpoint while later ones were being written


def test_eval_while_its_features_are_rewritten(encoded, tmp_path):
    """`tcd eval` during `tcd encode` of the groups it reads: each eval succeeds or stops with
    one clear line, and the writer's result equals a clean run's."""
    _, reference = encoded
    work = WorkDir(shutil.copytree(reference, tmp_path / "work"))
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=1, batch_size=4))
    train(config, features(work, "train"), RunDir(work.path, "r"))
    for group in work.stages():
        if group.stage in ("frames", "ocr_text", "queries"):
            del work.root[f"stages/{group.stage}"]
    writer = tcd_process(*ENCODE[:1], "--work", str(work.path), *ENCODE[1:])
    readers = 0
    while writer.poll() is None:
        _eval_or_one_line_error(work.path)
        readers += 1
    finish(writer)
    assert readers >= 1
    assert _eval_or_one_line_error(work.path) == 0
    assert_same(cache_arrays(work.path), cache_arrays(reference))


def test_sharded_workers_split_the_rows_and_equal_one_worker(encoded, tmp_path):
    before, reference = encoded
    work = Path(shutil.copytree(before, tmp_path / "work"))
    frames = StageGroups.resolve(WorkDir(work), PipelineSettings()).frames
    with frames.writing(Shard(0, 2)):  # as if shard 0/2 were running
        unsharded = tcd_process(*ENCODE[:1], "--work", str(work), *ENCODE[1:])
        same = tcd_process(*ENCODE[:1], "--work", str(work), *ENCODE[1:], "--shard", "0/2")
        assert "in use by another process" in one_line_error(unsharded)
        assert "shard 0/2 is in use" in one_line_error(same)
    shards = [
        tcd_process(*ENCODE[:1], "--work", str(work), *ENCODE[1:], "--shard", f"{i}/2")
        for i in range(2)
    ]
    outputs = [finish(p) for p in shards]
    for i, out in enumerate(outputs):
        assert f"frames {i}/2" in out and "6 computed" in out, out
    assert_same(cache_arrays(work), cache_arrays(reference))
    bad = tcd_process(*ENCODE[:1], "--work", str(work), "--shard", "2/2")
    assert "0 <= i < n" in one_line_error(bad)


def test_shard_rows_are_disjoint_and_cover_everything():
    import numpy as np

    rows = np.arange(23)
    parts = [Shard(i, 3).select(rows) for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
    assert Shard.parse("1/3") == Shard(1, 3)
    with pytest.raises(Exception, match="expected i/n"):
        Shard.parse("one")
