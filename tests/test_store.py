"""The cache store: append, change detection, invalidation, crash safety, locks, gc."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cache import CacheError, LockBusy, Shard, WorkDir
from pipeline.datasets import read_textvr
from pipeline.manifest import build_manifest
from tests.conftest import run_python


@dataclass(frozen=True)
class FakeOcr:
    fps: float = 2.0


@dataclass(frozen=True)
class FakeCaptions:
    xi: float = 1.0


def video_records(ids, version=1):
    return [
        {"id": v, "key": f"{v}-k{version}", "split": "test", "order": i} for i, v in enumerate(ids)
    ]


def fill(group, rows):
    """A fake stage: writes one value per row, computed from the row's current key."""
    keys, _ = group.expected()
    group.array("feat", (3,), "float32")
    group.ensure_rows(len(keys))
    feat = group.group["feat"]
    for row in rows:
        group.write_row(int(row), str(keys[row]), {"feat": np.full(3, float(row))})
    return feat


def test_a_column_an_older_work_dir_lacks_is_added_at_the_table_s_length(tmp_path):
    """Else the table reads as empty (its length is its shortest column's) and the next
    `tcd data` gives every video a new row."""
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b", "c"]))
    del work.manifest.videos.group["domain"]  # written before `domain` existed
    videos = WorkDir(tmp_path).manifest.videos
    assert len(videos) == 3 and videos.column("domain").tolist() == ["", "", ""]
    stats = videos.upsert(video_records(["a", "b", "c"]))
    assert (stats.added, stats.unchanged) == (0, 3)
    assert videos.row_of() == {"a": 0, "b": 1, "c": 2}


def test_open_missing_work_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="is not a work directory"):
        WorkDir(tmp_path / "nowhere")


def test_append_keeps_rows_and_computes_only_new_ones(tmp_path):
    work = WorkDir(tmp_path, create=True)
    stats = work.manifest.videos.upsert(video_records(["a", "b", "c"]))
    assert (stats.added, stats.unchanged) == (3, 0)
    group = work.stage("ocr", FakeOcr())
    assert group.pending().tolist() == [0, 1, 2]
    fill(group, group.pending())
    assert group.pending().tolist() == []
    assert group.counts()["done"] == 3

    stats = work.manifest.videos.upsert(video_records(["a", "b", "c", "d", "e"]))
    assert (stats.added, stats.unchanged) == (2, 3)
    assert work.manifest.videos.row_of() == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    group = work.stage("ocr", FakeOcr())
    assert group.pending().tolist() == [3, 4]
    feat = fill(group, group.pending())
    assert feat.shape == (5, 3)
    np.testing.assert_array_equal(feat[:, 0], [0, 1, 2, 3, 4])


def test_changed_key_makes_row_stale(tmp_path):
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    group = work.stage("ocr", FakeOcr())
    fill(group, [0, 1])
    records = video_records(["a", "b"])
    records[1]["key"] = "b-k2"
    stats = work.manifest.videos.upsert(records)
    assert (stats.changed, stats.unchanged) == (1, 1)
    assert group.counts() == {"done": 1, "stale": 1, "failed": 0, "pending": 0, "removed": 0}
    assert group.pending().tolist() == [1]  # recomputed, though counted stale, not pending


def test_upstream_settings_change_invalidates_downstream(tmp_path):
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    ocr = work.stage("ocr", FakeOcr())
    captions = work.stage("captions", FakeCaptions(), upstream=ocr.key)
    fill(ocr, [0, 1])
    fill(captions, [0, 1])
    assert work.stage("captions", FakeCaptions(), upstream=ocr.key).pending().size == 0

    ocr_new = work.stage("ocr", FakeOcr(fps=4.0))
    captions_new = work.stage("captions", FakeCaptions(), upstream=ocr_new.key)
    assert ocr_new.key != ocr.key and captions_new.key != captions.key
    assert captions_new.pending().tolist() == [0, 1]
    # the old chain is untouched and still valid
    assert work.stage("captions", FakeCaptions(), upstream=ocr.key).counts()["done"] == 2
    assert {(g.stage, g.key) for g in work.stages()} == {
        ("ocr", ocr.key),
        ("ocr", ocr_new.key),
        ("captions", captions.key),
        ("captions", captions_new.key),
    }


def test_failed_rows_are_logged_and_skipped_until_retried_or_changed(tmp_path):
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    group = work.stage("ocr", FakeOcr())
    group.fail_row(1, "b-k1", "b.mp4: truncated stream")
    fill(group, [0])
    assert group.counts() == {"done": 1, "stale": 0, "failed": 1, "pending": 0, "removed": 0}
    assert group.errors() == [(1, "b.mp4: truncated stream")]
    assert group.pending().tolist() == []
    assert group.pending(retry_failed=True).tolist() == [1]
    records = video_records(["a", "b"])
    records[1]["key"] = "b-k2"  # the user replaced the broken file
    work.manifest.videos.upsert(records)
    assert group.pending().tolist() == [1]
    fill(group, [1])
    assert group.errors() == [] and group.counts()["done"] == 2


@pytest.mark.parametrize("stored_fills", [False, True])
def test_row_states_read_from_chunk_files_equal_zarr_reading_them(tmp_path, stored_fills):
    """`read_row_chunks` reads the bookkeeping arrays' chunk files itself: done, failed,
    reset (no chunk: the fill value) and never-written rows, non-ASCII keys and messages,
    fill values kept in files (zarr's `write_empty_chunks`), rows past the end; layouts it
    does not know (several rows per chunk, fixed-width strings) go through zarr, and a
    corrupt chunk fails as zarr fails on it."""
    import zarr

    from cache.store import read_row_chunks

    work = WorkDir(tmp_path, create=True)
    ids = ["a", "b", "c", "d", "e", "f"]
    records = video_records(ids)
    records[1]["key"] = "b-視頻-😀"
    work.manifest.videos.upsert(records)
    with zarr.config.set({"array.write_empty_chunks": stored_fills}):
        group = work.stage("ocr", FakeOcr())
        fill(group, [0, 1, 3, 4])
        group.fail_row(2, "c-k1", "c.mp4: 讀不到 the stream")
        group.reset_rows([3])  # its chunks are dropped, or hold fill values
        group.array("warning", (), str, "")
        group.group["warning"][4] = "truncated: 1 of 12 frames repeated"
    names = ("done", "key", "error", "warning")
    expected = {name: group.group[name][:].tolist() for name in names}
    chunk_files = {
        name: len(list((tmp_path / "cache.zarr" / group.group[name].path / "c").iterdir()))
        for name in ("done", "error")
    }
    assert chunk_files == ({"done": 5, "error": 2} if stored_fills else {"done": 3, "error": 1})
    with pytest.MonkeyPatch.context() as patch:  # the chunk files alone, never zarr's reading
        patch.setattr(zarr.Array, "__getitem__", lambda *a: pytest.fail("read through zarr"))
        for name, values in expected.items():
            assert read_row_chunks(group.group[name], len(ids)).tolist() == values, name
        assert read_row_chunks(group.group["key"], 8).tolist() == expected["key"] + ["", ""]
    assert read_row_chunks(group.group["key"], 3).tolist() == ["a-k1", "b-視頻-😀", "c-k1"]
    assert group.counts() == {"done": 3, "stale": 0, "failed": 1, "pending": 2, "removed": 0}
    assert group.warnings() == [(4, "truncated: 1 of 12 frames repeated")]
    store = zarr.storage.LocalStore(tmp_path / "other.zarr")
    for name, dtype, chunks in (("pairs", str, (2,)), ("fixed", "<U3", (1,))):
        other = zarr.create_array(store, name=name, shape=(5,), chunks=chunks, dtype=dtype)
        other[:] = ["x", "", "zz", "y", "é"]
        assert read_row_chunks(other, 6).tolist() == ["x", "", "zz", "y", "é", ""], name
    (tmp_path / "cache.zarr" / group.group["key"].path / "c" / "0").write_bytes(b"not zstd")
    with pytest.raises(RuntimeError) as by_zarr:
        group.group["key"][0]
    with pytest.raises(RuntimeError, match=str(by_zarr.value)):
        read_row_chunks(group.group["key"], 2)


def test_writing_a_fill_value_where_no_chunk_is_kept_writes_nothing(tmp_path, monkeypatch):
    """A cleared error or an empty warning on a row without a chunk for it is not written
    (zarr would keep no chunk for it anyway); where one is kept, it is cleared."""
    import zarr

    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b", "c"]))
    group = work.stage("ocr", FakeOcr())
    group.array("warning", (), str, "")
    group.fail_row(1, "b-k1", "b.mp4: truncated stream")
    group.write_rows([(2, "c-k1", {"warning": "1 of 12 frames repeated"})])
    written = []
    setitem = zarr.AsyncArray.setitem

    async def counted(self, selection, value, *args):
        written.append((self.basename, selection))
        return await setitem(self, selection, value, *args)

    monkeypatch.setattr(zarr.AsyncArray, "setitem", counted)
    group.write_rows([(row, f"{v}-k1", {"warning": ""}) for row, v in enumerate("abc")])
    kept = [("error", 1), ("warning", 2)]  # the stored message and warning are cleared
    assert sorted(written) == sorted(kept + [(n, r) for n in ("key", "done") for r in range(3)])
    assert group.counts()["done"] == 3 and group.errors() == [] and group.warnings() == []
    chunks = tmp_path / "cache.zarr" / group.group.path
    assert not list((chunks / "error" / "c").glob("*")) + list((chunks / "warning" / "c").glob("*"))


CRASH_SCRIPT = """
import os, signal, sys
import numpy as np
import zarr
from cache import WorkDir
from tests.test_store import FakeOcr

work = WorkDir(sys.argv[1])
group = work.stage("ocr", FakeOcr())
crash_on = sys.argv[2]
original = zarr.AsyncArray.setitem  # what write_row's writes go through

async def setitem(self, selection, value, *args):
    if self.basename == crash_on:
        os.kill(os.getpid(), signal.SIGKILL)
    return await original(self, selection, value, *args)

zarr.AsyncArray.setitem = setitem
group.write_row(1, "b-k1", {"feat": np.full(3, 7.0)})
"""


@pytest.mark.parametrize("crash_on", ["key", "done"])
def test_crash_before_done_mark_leaves_row_pending(tmp_path, crash_on):
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    group = work.stage("ocr", FakeOcr())
    fill(group, [0])
    result = run_python(CRASH_SCRIPT, str(tmp_path), crash_on)
    assert result.returncode == -9, result.stderr
    group = WorkDir(tmp_path).stage("ocr", FakeOcr())
    assert group.group["feat"][1].tolist() == [7.0, 7.0, 7.0]  # the data reached the disk...
    assert group.pending().tolist() == [1]  # ...but the row is not valid without its done mark
    assert group.counts()["done"] == 1
    fill(group, group.pending())
    assert group.counts()["done"] == 2


@pytest.mark.parametrize("crash_on", ["key", "done"])
def test_a_block_crash_never_leaves_a_key_beside_old_data(tmp_path, crash_on):
    """`write_rows` writes all data, then all keys, then all done marks: a crash at the keys
    leaves every row of the block pending, a stale one (done for its old key) too; at the done
    marks, only the stale row is valid, its new data having reached the disk before its key."""
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b", "c"]))
    group = work.stage("ocr", FakeOcr())
    fill(group, [0])
    work.manifest.videos.upsert(video_records(["a", "b", "c"], version=2))
    rows = "[(r, f'{v}-k2', {'feat': np.full(3, 7.0)}) for r, v in enumerate('abc')]"
    script = CRASH_SCRIPT.replace(
        'group.write_row(1, "b-k1", {"feat": np.full(3, 7.0)})', f"group.write_rows({rows})"
    )
    result = run_python(script, str(tmp_path), crash_on)
    assert result.returncode == -9, result.stderr
    group = WorkDir(tmp_path).stage("ocr", FakeOcr())
    assert group.group["feat"][:].tolist() == [[7.0] * 3] * 3  # every row's data is on disk
    assert group.pending().tolist() == ([0, 1, 2] if crash_on == "key" else [1, 2])


def test_rows_are_written_from_async_code_too(tmp_path):
    """`write_row` runs its writes on an event loop of its own: also from a notebook, whose
    thread already runs one."""
    import asyncio

    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    group = work.stage("ocr", FakeOcr())

    async def notebook_cell():
        fill(group, [0, 1])

    asyncio.run(notebook_cell())
    assert group.counts()["done"] == 2 and group.group["feat"][1].tolist() == [1.0] * 3


def test_recomputing_a_stale_row_is_crash_safe(tmp_path):
    """A done row whose video changed: a crash mid-rewrite must not leave it 'done'."""
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    group = work.stage("ocr", FakeOcr())
    fill(group, [0, 1])
    records = video_records(["a", "b"])
    records[1]["key"] = "b-k1"  # CRASH_SCRIPT rewrites row 1 for key b-k1 ...
    records[0]["key"] = "a-k2"
    work.manifest.videos.upsert(records)
    result = run_python(
        CRASH_SCRIPT.replace('write_row(1, "b-k1"', 'write_row(0, "a-k2"'), str(tmp_path), "key"
    )
    assert result.returncode == -9
    assert WorkDir(tmp_path).stage("ocr", FakeOcr()).pending().tolist() == [0]


LOCK_SCRIPT = """
import sys, time
from cache import WorkDir
work = WorkDir(sys.argv[1])
with work.stage_lock("ocr", "k"):
    print("locked", flush=True)
    time.sleep(60)
"""


def lock_holder(script: str, work: Path):
    """A Python process running `script` on the work dir `work` (made here), its stdout
    piped: it prints once it holds the lock."""
    import subprocess
    import sys

    from tests.conftest import REPO

    WorkDir(work, create=True)
    command = [sys.executable, "-c", script, str(work)]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)


def test_two_processes_contend_for_the_writer_lock(tmp_path):
    holder = lock_holder(LOCK_SCRIPT, tmp_path)
    try:
        assert holder.stdout.readline().strip() == "locked"
        work = WorkDir(tmp_path)
        with pytest.raises(LockBusy, match=f"pid {holder.pid}"):
            work.stage_lock("ocr", "k").acquire()
        started = time.monotonic()
        with pytest.raises(LockBusy):
            work.stage_lock("ocr", "k", timeout=0.5).acquire()
        assert time.monotonic() - started >= 0.5
        with work.stage_lock("ocr", "other"):  # other groups are not blocked
            pass
    finally:
        holder.kill()  # a killed holder must not leave a stale lock
        holder.wait()
    with WorkDir(tmp_path).stage_lock("ocr", "k"):
        pass


FORKING_LOCK_SCRIPT = """
import multiprocessing, sys, time
from cache import WorkDir
work = WorkDir(sys.argv[1])
with work.stage_lock("ocr", "k"):
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()  # as a DataLoader worker or a writer process is forked under the lock
    print(child.pid, flush=True)
    time.sleep(60)
"""


def test_a_killed_holder_s_forked_children_do_not_keep_its_lock(tmp_path):
    """The stage process is killed while its forked workers live on (they notice seconds
    later): a rerun takes the lock at once, not refused in the name of a dead process."""
    import signal

    holder = lock_holder(FORKING_LOCK_SCRIPT, tmp_path)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(LockBusy):
            WorkDir(tmp_path).stage_lock("ocr", "k").acquire()
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the child is still running
        with WorkDir(tmp_path).stage_lock("ocr", "k"):
            pass
    finally:
        holder.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


SHARD_ON_A_NEW_GROUP = """
import sys, time
from pathlib import Path
import cache.lock
from cache import Shard, WorkDir

acquire = cache.lock.WriterLock.acquire

def acquire_soon(self):  # a writer lock wait is cut to 1 s, so a refusal comes quickly
    if ".layout" not in self.path.name:  # (creating the group may take seconds under load)
        self.timeout = min(self.timeout, 1.0)
    acquire(self)

cache.lock.WriterLock.acquire = acquire_soon
find_stage, looked = WorkDir.find_stage, []

def find_none_first(self, *args):  # both shards looked before either created the group
    looked.append(1)
    return None if len(looked) == 1 else find_stage(self, *args)

WorkDir.find_stage = find_none_first
work, index = WorkDir(sys.argv[1]), int(sys.argv[2])
ready = Path(sys.argv[1], f"ready{index}")
ready.touch()
deadline = time.monotonic() + 30
while not Path(sys.argv[1], f"ready{1 - index}").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
group = work.stage("ocr", {"fps": 2})
with group.writing(Shard(index, 2)):
    print("running", flush=True)
    time.sleep(2.5)
"""


def test_shards_started_together_on_a_new_group_both_run(tmp_path):
    """Slurm array jobs on a fresh work dir: each shard finds no group and creates it. The
    first to create it then holds the writer lock shared for its whole run; creating under
    that lock (exclusive) refused the other shard."""
    import subprocess
    import sys

    from tests.conftest import REPO

    WorkDir(tmp_path, create=True).manifest.videos.upsert(video_records(["a", "b"]))
    shards = [
        subprocess.Popen(
            [sys.executable, "-c", SHARD_ON_A_NEW_GROUP, str(tmp_path), str(index)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in (0, 1)
    ]
    outputs = [shard.communicate(timeout=60) for shard in shards]
    assert [out.strip() for out, _ in outputs] == ["running", "running"], outputs
    assert len(WorkDir(tmp_path).stages()) == 1


def test_a_manifest_string_that_is_not_utf8_is_refused_naming_its_row_and_column(tmp_path):
    work = WorkDir(tmp_path, create=True)
    records = [{"id": "a.mp4#0", "key": "k", "text": "half \ud83d"}]
    with pytest.raises(CacheError, match=r"captions 'a.mp4#0': text 'half \\ud83d' is not UTF-8"):
        work.manifest.captions.upsert(records)
    assert len(work.manifest.captions) == 0  # nothing written


def test_a_killed_writer_s_record_does_not_name_it_as_the_holder(tmp_path):
    """A killed exclusive holder leaves its pid in the lock file; the lock held shared
    since (by a reader or a shard) is not that dead process's."""
    import json
    import socket
    import subprocess
    import sys

    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    work = WorkDir(tmp_path, create=True)
    lock_file = work.stage_lock("ocr", "k").path
    with work.lock("ocr-k", shared=True):
        for host, holder in [
            (socket.gethostname(), "a reader or a sharded worker"),
            ("elsewhere", f"pid {dead} on elsewhere"),  # another host's process: not known
        ]:
            lock_file.write_text(json.dumps({"pid": dead, "host": host, "since": 0}))
            with pytest.raises(LockBusy, match=f"another process \\({holder}\\)"):
                work.stage_lock("ocr", "k").acquire()


def test_readers_share_the_manifest_lock_but_block_a_writer(tmp_path):
    work = WorkDir(tmp_path, create=True)
    with work.manifest_lock(shared=True), work.manifest_lock(shared=True):
        with pytest.raises(LockBusy, match="the manifest"):
            work.manifest_lock().acquire()


def test_manifest_from_synth_detects_changes_and_removals(synth_copy, tmp_path):
    work = WorkDir(tmp_path / "work", create=True)
    dataset = read_textvr(synth_copy)
    report = build_manifest(work, dataset, progress=False)
    assert report.videos.added == 12 and report.unreadable == 0
    videos = work.manifest.videos.read()
    assert (videos["fps"] == 10).all() and (videos["duration"] >= 3).all()
    assert (videos["n_frames"] >= 30).all()
    captions = work.manifest.captions.read()
    assert set(captions["video_row"]) == set(range(12))

    group = work.stage("ocr", FakeOcr())
    fill(group, group.pending())
    report = build_manifest(work, read_textvr(synth_copy), progress=False)
    assert (report.videos.unchanged, report.videos.changed) == (12, 0)
    assert group.pending().size == 0

    victim = dataset.videos[5].path
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    dataset.videos.pop(7)  # video 7 leaves the dataset
    report = build_manifest(work, dataset, progress=False)
    assert (report.videos.changed, report.videos.removed) == (1, 1)
    assert report.captions.removed == len(read_textvr(synth_copy).videos[7].captions)
    assert group.pending().tolist() == [5]
    assert group.counts()["removed"] == 1

    cleared = work.gc()
    assert cleared["rows_cleared"] == 1
    assert group.counts()["removed"] == 0
    assert group.group["feat"][7].tolist() == [0, 0, 0]


def test_unreadable_video_is_recorded_not_fatal(synth_copy, tmp_path):
    dataset = read_textvr(synth_copy)
    dataset.videos[0].path.write_bytes(b"")  # zero bytes
    dataset.videos[1].path.unlink()
    work = WorkDir(tmp_path / "work", create=True)
    report = build_manifest(work, dataset, progress=False)
    assert report.unreadable == 2 and report.videos.added == 12
    errors = work.manifest.videos.column("error")
    assert "file not found" in errors[1] and str(dataset.videos[1].path) in errors[1]
    assert errors[0].startswith(str(dataset.videos[0].path))
    assert (errors[2:] == "").all()
    assert work.status()["videos"]["unreadable"] == 2


def test_gc_removes_partial_chunk_files(tmp_path):
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a"]))
    group = work.stage("ocr", FakeOcr())
    fill(group, [0])
    partial = (
        tmp_path / "cache.zarr" / "stages" / "ocr" / group.key / "feat" / "c" / "0.abc.partial"
    )
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"junk")
    assert work.gc(dry_run=True)["partial_files"] == 1 and partial.exists()
    assert work.gc()["partial_files"] == 1 and not partial.exists()


def test_a_killed_manifest_update_is_repaired_by_the_next(tmp_path):
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    work.manifest.videos.group["id"].resize((5,))  # as if killed after growing one column
    assert len(work.manifest.videos) == 2 and work.manifest.videos.row_of() == {"a": 0, "b": 1}
    stats = work.manifest.videos.upsert(video_records(["a", "b", "c"]))
    assert (stats.added, stats.unchanged) == (1, 2)
    assert {n: work.manifest.videos.group[n].shape[0] for n in ("id", "key", "path")} == {
        "id": 3,
        "key": 3,
        "path": 3,
    }


def test_an_update_killed_before_its_keys_reads_as_the_old_table(tmp_path):
    """`upsert` grows and writes `key` last: killed before it, every other column is longer
    and the table is still the rows its keys cover."""
    work = WorkDir(tmp_path, create=True)
    videos = work.manifest.videos
    videos.upsert(video_records(["a", "b"]))
    for name in videos.columns:
        if name != "key":
            videos.group[name].resize((4,))
    assert len(videos) == 2 and list(videos.column("id")) == ["a", "b"]
    assert {len(values) for values in videos.read().values()} == {2}


def test_reading_columns_opens_each_column_array_once(tmp_path, monkeypatch):
    """Each array open reads its metadata from disk: the length was the shortest column's,
    found by opening every column for every column read (a whole-table read opened 12 x 13
    arrays, and readers of the manifest spent most of their time there)."""
    import zarr

    work = WorkDir(tmp_path, create=True)
    videos = work.manifest.videos
    videos.upsert(video_records(["a", "b"]))
    opened = []
    real = zarr.Group.__getitem__
    monkeypatch.setattr(zarr.Group, "__getitem__", lambda g, k: opened.append(k) or real(g, k))
    videos.read()
    assert sorted(opened) == sorted(videos.columns)
    opened.clear()
    videos.read(["present", "split"])
    assert sorted(opened) == ["key", "present", "split"]


def test_a_group_creation_killed_between_attribute_writes_is_redone(tmp_path):
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    group = work.stage("ocr", FakeOcr())
    path = f"stages/ocr/{group.key}"
    del work.root[path]
    work.root.require_group(path).attrs["stage"] = "ocr"  # killed after the first attribute
    assert WorkDir(tmp_path).stages() == []  # readers skip it
    again = WorkDir(tmp_path).stage("ocr", FakeOcr())  # the next writer redoes it
    assert again.key == group.key and again.n_rows == 2
    assert [g.key for g in WorkDir(tmp_path).stages()] == [group.key]


@pytest.mark.parametrize("cut_at", [1, 2, 3])
def test_a_gc_cut_off_midway_never_leaves_a_row_done_over_cleared_data(
    tmp_path, monkeypatch, cut_at
):
    """gc clears a removed video's row array by array; killed after `cut_at` arrays (whatever
    order the store lists them in, here the data first), the row must not read as done: the
    video may come back with the same content, and a done row would never be recomputed."""
    import zarr

    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    group = work.stage("ocr", FakeOcr())
    fill(group, [0, 1])
    work.manifest.videos.upsert(video_records(["a"]))  # b removed
    listed = zarr.Group.array_keys
    data_first = ["feat", "error", "key", "done"]
    monkeypatch.setattr(
        zarr.Group,
        "array_keys",
        lambda self: (
            iter(sorted(listed(self), key=data_first.index))
            if self.path.startswith("stages/")
            else listed(self)
        ),
    )
    cleared = []
    setitem = zarr.Array.__setitem__

    def killed_after_cut(array, selection, value):
        if len(cleared) == cut_at:
            raise KeyboardInterrupt  # the process dies here
        cleared.append(array.path)
        return setitem(array, selection, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", killed_after_cut)
    with pytest.raises(KeyboardInterrupt):
        work.gc()
    monkeypatch.undo()
    work = WorkDir(tmp_path)
    work.manifest.videos.upsert(video_records(["a", "b"]))  # b is back, same content
    group = work.find_stage("ocr", group.key)
    assert group.pending().tolist() == [1]  # recomputed, not read as done over cleared data


def test_a_reader_never_sees_a_failing_row_as_done_with_its_old_data(tmp_path, monkeypatch):
    """A reader (`tcd eval` while `tcd encode` runs) reads the row states while the stage
    fails a row whose content changed: it sees the row stale or failed, never done."""
    import cache.store as store

    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a"]))
    group = work.stage("ocr", FakeOcr())
    fill(group, [0])
    work.manifest.videos.upsert(video_records(["a"], version=2))  # the file was replaced
    read = store.read_row_chunks
    for between in ("key", "done", "error"):  # the writer's steps land between two reads

        def interleaved(array, n, between=between):
            out = read(array, n)
            if array.path.endswith("/" + between):
                group.fail_row(0, "a-k2", "VideoError: a.mp4 truncated")
            return out

        monkeypatch.setattr(store, "read_row_chunks", interleaved)
        states = {name: bool(mask[0]) for name, mask in group.row_states().items()}
        monkeypatch.setattr(store, "read_row_chunks", read)
        assert not states["done"], (between, states)
        group.group["key"][0], group.group["done"][0] = "a-k1", True  # as before the failure
        group.group["error"][0] = ""


def test_a_lock_whose_holder_record_cannot_be_written_is_given_back(tmp_path, monkeypatch):
    """A full disk while the holder's pid is written: the error is raised and the lock is not
    kept by this (long-lived: a notebook, a Ray actor) process."""
    import errno

    import cache.lock as lock

    work = WorkDir(tmp_path, create=True)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock.os, "pwrite", full)
    with pytest.raises(OSError, match="No space left"):
        work.stage_lock("ocr", "k").acquire()
    monkeypatch.undo()
    with work.stage_lock("ocr", "k", timeout=0.2):
        pass


def test_a_block_whose_write_failed_is_written_again_by_salvage(tmp_path):
    """A block whose background write raised (a full disk, then freed) is not dropped: the
    stage's `salvage` writes it in its own process, so its rows end done."""
    import errno

    from pipeline.stage import _BlockWriter

    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    group = work.stage("ocr", FakeOcr())
    fill(group, [])
    keys, _ = group.expected()
    written = []
    writer = _BlockWriter(group, written.extend, refused=lambda row, key, exc: None)

    def full(block):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.write = full
    for row in (0, 1):
        writer.add(row, str(keys[row]), {"feat": np.full(3, float(row))})
    writer.flush()
    with pytest.raises(OSError):
        writer.wait()
    writer.salvage()
    writer.close()
    assert [row for row, _, _ in written] == [0, 1]
    assert group.counts()["done"] == 2 and group.group["feat"][1].tolist() == [1.0, 1.0, 1.0]


def test_the_cli_s_shard_0_of_1_is_an_unsharded_run(tmp_path):
    """A Slurm array of one task passes `--shard 0/1`: the whole stage, alone. As a shard it
    would share the writer lock with `--shard 0/2` workers and compute their rows twice; a
    Ray run's single task is the `0/1` that shares it, under its coordinator."""
    from cli.stages import StageRun

    assert StageRun(shard="0/1").parsed_shard is None
    assert StageRun(shard="1/2").parsed_shard == Shard(1, 2)
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert(video_records(["a", "b"]))
    group = work.stage("ocr", {"fps": 2})
    with group.writing(Shard(0, 2)), pytest.raises(LockBusy):
        with group.writing(StageRun(shard="0/1").parsed_shard):
            pass
    with group.shared_lock(), group.writing(Shard(0, 1)):  # the Ray task, as its coordinator
        pass
