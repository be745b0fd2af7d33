"""Storage faults: a write error injected mid-stage, a real full disk (a small tmpfs, where this
machine lets us mount one) and a failing checkpoint write. Each stops with a clear message and
keeps what was written; the rerun completes and equals a run that never failed."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest
import zarr.storage._local as zarr_local

from cache import CacheError, WorkDir
from heads.checkpoint import load_checkpoint
from heads.config import RunConfig, TrainSettings
from heads.modules import HeadSettings
from heads.run_dir import RunDir
from heads.train import train
from pipeline.encode import run_encode
from pipeline.settings import CaptionSettings, EncodeSettings
from tests.reliability.harness import assert_nothing_half_done, assert_same, cache_arrays
from tests.test_stages import KWAI
from tests.test_train import planted


def failing_writes(monkeypatch, after: int) -> dict[str, int]:
    """Make every zarr chunk/metadata write after the first `after` fail with ENOSPC."""
    real_put, count = zarr_local._put, {"writes": 0}

    def put(path, value, exclusive=False):
        count["writes"] += 1
        if count["writes"] > after:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    return count


@pytest.mark.parametrize("after", [3, 60])
def test_write_error_mid_stage_stops_clearly_and_the_rerun_completes(
    encoded, tmp_path, monkeypatch, after
):
    before, reference = encoded
    work = WorkDir(shutil.copytree(before, tmp_path / "work"))
    failing_writes(monkeypatch, after)
    with pytest.raises(CacheError, match="No space left on device.*rerun"):
        run_encode(work, EncodeSettings(), CaptionSettings(), KWAI, workers=0, progress=False)
    monkeypatch.undo()
    assert_nothing_half_done(work.path, reference)
    reports = run_encode(work, EncodeSettings(), CaptionSettings(), KWAI, progress=False)
    assert all(r.failed == 0 for r in reports)
    assert_same(cache_arrays(work.path), cache_arrays(reference))


def _mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    try:
        return subprocess.run(command, capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def _allocated(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_full_disk_stops_the_cli_with_one_line_and_the_rerun_completes(encoded, tmp_path):
    """A real ENOSPC: the work dir on a tmpfs with room for about half of the encodings."""
    before, reference = encoded
    mount = tmp_path / "disk"
    need = _allocated(reference) - _allocated(before)
    if not _mount_tmpfs(mount, _allocated(before) + need // 2 + 64 * 1024):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected write errors cover it")
    try:
        shutil.copytree(before, mount / "work")
        from tests.conftest import tcd_process

        proc = tcd_process("encode", "--work", str(mount / "work"), "-q", "--workers", "0")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, out + err
        assert "No space left on device" in err and "Traceback" not in err
        assert err.count("\n") == 1, err  # one line
        assert_nothing_half_done(mount / "work", reference)
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        work = WorkDir(mount / "work")
        reports = run_encode(work, EncodeSettings(), CaptionSettings(), KWAI, progress=False)
        assert sum(r.computed for r in reports) and not any(r.failed for r in reports)
        assert_same(cache_arrays(mount / "work"), cache_arrays(reference))
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_failed_checkpoint_write_keeps_the_last_good_one_and_the_rerun_resumes(
    tmp_path, monkeypatch
):
    data = planted(n=48)
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=4, batch_size=16, patience=9))
    train(config, data, RunDir.at(tmp_path / "clean"))
    import heads.train as trainer

    real_save, last_saves = trainer.torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        last_saves["n"] += "last" in Path(f).name
        if "last" in Path(f).name and last_saves["n"] == 2:  # epoch 1's last.pt
            Path(f).write_bytes(b"half")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(trainer.torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        train(config, data, RunDir.at(tmp_path / "faulty"))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "faulty" / "last.pt")["epoch"] == 0  # the good one
    train(config, data, RunDir.at(tmp_path / "faulty"))
    for name in ("best.pt", "last.pt"):
        clean = load_checkpoint(tmp_path / "clean" / name)["model"]
        resumed = load_checkpoint(tmp_path / "faulty" / name)["model"]
        assert_same(clean, resumed, name)


@pytest.mark.parametrize("after", [10, 35])  # creating the tables; updating their rows
def test_write_error_while_building_the_manifest_is_repaired_by_the_rerun(
    synth_set, tmp_path, monkeypatch, after
):
    from pipeline.datasets import read_textvr
    from pipeline.manifest import build_manifest

    clean = WorkDir(tmp_path / "clean", create=True)
    build_manifest(clean, read_textvr(synth_set), progress=False)
    work = WorkDir(tmp_path / "work", create=True)
    writes = failing_writes(monkeypatch, after)
    with pytest.raises(OSError, match="No space left"):
        build_manifest(work, read_textvr(synth_set), progress=False)
    monkeypatch.undo()
    assert writes["writes"] > after  # the fault was hit
    report = build_manifest(WorkDir(work.path), read_textvr(synth_set), progress=False)
    assert report.videos.added + report.videos.changed + report.videos.unchanged == 12
    for table in ("videos", "captions"):
        a = getattr(WorkDir(work.path).manifest, table).read()
        b = getattr(clean.manifest, table).read()
        assert_same(a, b, table)
