"""The work directory: a Zarr v3 store holding the manifest and one group per stage and key.

Layout (``W`` is the work dir)::

    W/cache.zarr/manifest/videos/<column>        one row per video, append-only
    W/cache.zarr/manifest/captions/<column>      one row per caption/query, append-only
    W/cache.zarr/stages/<stage>/<key>/done       bool per row, written last
    W/cache.zarr/stages/<stage>/<key>/key        the input key the row was computed for
    W/cache.zarr/stages/<stage>/<key>/error      last failure message of the row ('' if none)
    W/cache.zarr/stages/<stage>/<key>/<data>     per-row data, one chunk per row (stages that
                                                 decode add `warning`: '' or why a row's
                                                 frames are not all real)
    W/cache.zarr/stages/<stage>/<key> attrs      stage, key, rows, upstream, settings, created,
                                                 reports (the last run's, per shard)
    W/locks/*.lock                               writer locks (flock)

Row r of every per-video array belongs to manifest video row r (captions likewise). A row is
valid when ``done[r]`` and ``key[r]`` equals the manifest's current key for row r (the video's
content key, or the caption's text key). Rows are never renumbered: removed videos keep their
row with ``present = False`` until ``gc`` clears their stage data.

Concurrency rules (STYLE.md, "Zarr v3 facts"): only the process holding a group's writer lock
resizes its arrays; every per-row array has one chunk per row so rows never share an object;
chunk files are written atomically by zarr's LocalStore (temp file + rename).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # zarr loads (0.26 s) with the first work dir opened, not with `tcd --help`
    import zarr

from cache.errors import CacheError
from cache.keys import settings_key, to_plain
from cache.lock import WriterLock

STORE_NAME = "cache.zarr"
ROW_KINDS = ("videos", "captions")

# Column name -> (numpy dtype or str, fill value). `id`, `key`, `present`, `order`, `split`
# are common to both tables; `order` is the position inside the split's annotation file.
_COMMON = {
    "id": (str, ""),
    "key": (str, ""),
    "present": ("bool", False),
    "order": ("int64", -1),
    "split": (str, ""),
}
VIDEO_COLUMNS: dict[str, tuple[Any, Any]] = {
    **_COMMON,
    "path": (str, ""),
    "domain": (str, ""),
    "ocr_path": (str, ""),
    "duration": ("float64", 0.0),
    "fps": ("float64", 0.0),
    "n_frames": ("int64", 0),
    "error": (str, ""),
}
CAPTION_COLUMNS: dict[str, tuple[Any, Any]] = {
    **_COMMON,
    "video_row": ("int64", -1),
    "text": (str, ""),
}
_MANIFEST_CHUNK = 4096
# A row's key is its manifest key, or `<manifest key>|<part>` for a group whose rows are also
# computed from something outside the video (an imported OCR file: see `StageGroup.expected`).
ROW_KEY_SEPARATOR = "|"
# how a stage records a row failed because the manifest records its video unreadable: the
# video's key is its file's content, so a probe that succeeds later keeps the key, and the
# row is computed again once the manifest's error is cleared (`StageGroup.pending`)
UNREADABLE_VIDEO = "unreadable video: "
RowKeyPart = Callable[[], np.ndarray]  # per manifest row: the part ('' for none)


def storable_text(text: str) -> str:
    """`text` as the store's UTF-8 string arrays can hold it: lone surrogates (a JSON
    `\\ud83d` escape without its pair, a file name that is not UTF-8) become '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


@dataclass
class UpsertStats:
    """What a manifest update did, by row count."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0

    def __str__(self) -> str:
        return (
            f"{self.added} added, {self.changed} changed, "
            f"{self.unchanged} unchanged, {self.removed} removed"
        )


class Table:
    """An append-only table of rows stored as one Zarr array per column.

    Only the holder of the manifest lock writes; readers load whole columns (a TextVR-sized
    manifest is a few MB).
    """

    def __init__(self, group: zarr.Group, columns: dict[str, tuple[Any, Any]]):
        self.group = group
        self.columns = columns
        existing = set(group.array_keys())
        # a column an older work dir lacks holds its fill value in every row it has (at
        # length 0 it would make the table read as empty, and the next update renumber it)
        rows = int(group["id"].shape[0]) if "id" in existing else 0
        for name, (dtype, fill) in columns.items():
            if name not in existing:
                group.create_array(
                    name,
                    shape=(rows,),
                    chunks=(_MANIFEST_CHUNK,),
                    dtype=dtype,
                    fill_value=fill,
                )

    def __len__(self) -> int:
        return int(self.group["key"].shape[0])

    def column(self, name: str) -> np.ndarray:
        return self.read([name])[name]

    def read(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Columns by name (default: all), each as long as the table.

        The table is as long as its `key` column: `upsert` grows and writes `key` after every
        other column, so a killed update leaves the rows past it unread (each array open
        reads metadata from disk: only the columns asked for are opened)."""
        names = list(names or self.columns)
        arrays = {name: self.group[name] for name in {"key", *names}}
        n = min(int(array.shape[0]) for array in arrays.values())
        out = {}
        for name in names:
            values = arrays[name][:n]
            out[name] = values.astype(object) if self.columns[name][0] is str else values
        return out

    def row_of(self) -> dict[str, int]:
        """id -> row index."""
        return {str(vid): row for row, vid in enumerate(self.column("id"))}

    def upsert(
        self, records: Sequence[dict[str, Any]], splits: Sequence[str] | None = None
    ) -> UpsertStats:
        """Insert or update rows by `id`; rows whose id is not in `records` become absent
        (given `splits`, only rows of those splits: the others were not read).

        A record must hold `id` and `key`; missing columns keep their stored value (or fill).
        Writes `key` last, so a crash mid-update leaves stale keys that the next run repairs.
        """
        data = self.read()
        n_old = len(data["id"])
        rows = {vid: row for row, vid in enumerate(data["id"])}
        stats = UpsertStats()
        new_rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for record in records:
            vid = record["id"]
            if vid in seen:
                raise CacheError(f"duplicate id {vid!r} in one manifest update")
            self._require_utf8(record)
            seen.add(vid)
            row = rows.get(vid)
            if row is None:
                new_rows.append(record)
                stats.added += 1
                continue
            if data["key"][row] == record["key"] and data["present"][row]:
                stats.unchanged += 1
            else:
                stats.changed += 1
            for name, value in record.items():
                data[name][row] = value
            data["present"][row] = True
        for row in range(n_old):
            read = splits is None or data["split"][row] in splits
            if read and data["present"][row] and data["id"][row] not in seen:
                data["present"][row] = False
                stats.removed += 1
        for name, (_, fill) in self.columns.items():
            extra = [r.get(name, fill) for r in new_rows]
            if name == "present":
                extra = [True] * len(new_rows)
            data[name] = np.concatenate([data[name], np.array(extra, dtype=data[name].dtype)])
        n_new = n_old + len(new_rows)
        for name in [*(c for c in self.columns if c != "key"), "key"]:
            array = self.group[name]
            if array.shape[0] != n_new:
                array.resize((n_new,))
            if n_new:
                values = data[name]
                array[:] = values.astype(str) if self.columns[name][0] is str else values
        return stats

    def _require_utf8(self, record: dict[str, Any]) -> None:
        """Refuse, naming the row and column, a string the UTF-8 arrays cannot hold (a
        path or text holding lone surrogates: an undecodable file name, a JSON escape)."""
        for name, value in record.items():
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise CacheError(
                        f"manifest {self.group.basename} {record['id']!r}: {name} {value!r} "
                        "is not UTF-8 text; rename the file or fix the annotation"
                    ) from None


class Manifest:
    """The `videos` and `captions` tables plus dataset attributes (name, root)."""

    def __init__(self, group: zarr.Group):
        self.group = group
        self.videos = Table(group.require_group("videos"), VIDEO_COLUMNS)
        self.captions = Table(group.require_group("captions"), CAPTION_COLUMNS)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def table(self, rows: str) -> Table:
        if rows not in ROW_KINDS:
            raise CacheError(f"unknown row kind {rows!r}; expected one of {ROW_KINDS}")
        return self.videos if rows == "videos" else self.captions


_GROUP_ATTRS = ("stage", "key", "rows", "upstream", "settings", "created")


def _complete(group: zarr.Group) -> bool:
    """Whether a stage group's creation finished (all its attributes are written)."""
    return all(name in group.attrs for name in _GROUP_ATTRS)


@dataclass(frozen=True)
class Shard:
    """Worker `index` of `count` sharing one stage group: it takes the rows r with
    r % count == index, so workers started with one `count` never touch the same row."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise CacheError(f"shard {self}: expected i/n with 0 <= i < n")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'i/n', e.g. '0/2' and '1/2' for two workers."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise CacheError(f"--shard {text!r}: expected i/n, e.g. 0/2") from None
        return cls(index, count)

    def select(self, rows: np.ndarray) -> np.ndarray:
        return rows[rows % self.count == self.index]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def read_row_chunks(array: zarr.Array, n: int) -> np.ndarray:
    """The first `n` values of a bool or string array with one chunk per row (`done`, `key`,
    `error`, `warning`): bool, or str objects; rows past the array's end are the fill value.
    zarr spends about 0.3 ms of Python per chunk, so a stage's row states over 3,000 rows
    took it 2-2.5 s; where the array has the layout this module makes (`_row_chunk_files`)
    the files are read and decoded here, about 10x faster. A missing file is the fill value,
    as in zarr (chunk files are replaced by rename, so a read never sees half of one). Any
    other layout, or a chunk this does not recognise, is read through zarr."""
    layout, fill = _row_chunk_files(array), array.fill_value
    if layout is None:
        read = array[:n]
        values = np.full(n, fill, dtype=bool if read.dtype == bool else object)
        values[: len(read)] = read if read.dtype == bool else read.astype(object)
        return values
    from numcodecs import Zstd

    (kind, folder), zstd = layout, Zstd()
    values = np.full(n, fill, dtype=bool if kind == "bool" else object)
    for row in range(min(n, array.shape[0])):
        try:
            raw = bytes(zstd.decode((folder / str(row)).read_bytes()))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue  # no chunk: the fill value (zarr's LocalStore reads these the same way)
        except Exception:  # noqa: BLE001 - zarr reads it below, and says what is wrong
            raw = b""
        if kind == "bool" and len(raw) == 1:
            values[row] = raw != b"\x00"
        elif kind == "str" and raw[:4] == b"\x01\x00\x00\x00":  # one item: length, utf-8
            length = int.from_bytes(raw[4:8], "little")
            values[row] = raw[8:].decode() if len(raw) == 8 + length else str(array[row])
        else:
            values[row] = (bool if kind == "bool" else str)(array[row])
    return values


def _row_chunk_files(array: zarr.Array) -> tuple[str, Path] | None:
    """('bool' or 'str', the folder of its chunk files, row r in `<folder>/<r>`) where this
    module can see an array's chunk files itself (`read_row_chunks`, `write_rows`): a local
    store, one row per chunk in files `c/<row>`, `bytes` (bool) or `vlen-utf8` (str) then
    `zstd`; None for anything else."""
    from zarr.storage import LocalStore

    try:
        meta = array.metadata.to_dict()
        grid, codecs = meta["chunk_grid"], tuple(codec["name"] for codec in meta["codecs"])
        regular = grid["name"] == "regular" and tuple(grid["configuration"]["chunk_shape"]) == (1,)
        key_files = meta["chunk_key_encoding"] == {
            "name": "default",
            "configuration": {"separator": "/"},
        }
        kinds = {("bool", ("bytes", "zstd")): "bool", ("string", ("vlen-utf8", "zstd")): "str"}
        kind = (
            kinds.get((meta["data_type"], codecs)) if isinstance(meta["data_type"], str) else None
        )
    except (AttributeError, KeyError, TypeError):  # zarr v2 metadata, another grid
        return None
    if kind is None or not regular or not key_files or not isinstance(array.store, LocalStore):
        return None
    return kind, Path(array.store.root) / array.path / "c"


class StageGroup:
    """One stage's cache for one settings key: per-row data plus done/key/error bookkeeping.

    `row_key_part`, from whoever opens the group for a stage (`pipeline.settings.StageGroups`),
    gives what else each row is computed from (see `expected`)."""

    def __init__(self, work: WorkDir, group: zarr.Group, row_key_part: RowKeyPart | None = None):
        self.work = work
        self.group = group
        self.row_key_part = row_key_part
        attrs = dict(group.attrs)
        self.stage: str = attrs["stage"]
        self.key: str = attrs["key"]
        self.rows: str = attrs["rows"]
        self.settings: dict[str, Any] = attrs.get("settings", {})
        self.upstream: str | None = attrs.get("upstream")

    # -- shape and arrays -------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return int(self.group["done"].shape[0])

    def lock(self, timeout: float = 0.0) -> WriterLock:
        return self.work.stage_lock(self.stage, self.key, timeout)

    @contextmanager
    def writing(self, shard: Shard | None = None) -> Iterator[None]:
        """The right to write rows. Unsharded: the group's writer lock, alone. Sharded: the
        writer lock shared with the other shards (so an unsharded writer is refused) plus
        this shard's own lock (so one shard never runs twice). `0/1` is a shard too: a Ray
        run's single task shares the writer lock its coordinator holds shared (the CLI's
        `--shard 0/1` is an unsharded run)."""
        if shard is None:
            with self.lock():
                yield
            return
        name, what = f"{self.stage}-{self.key}", f"stage {self.stage} ({self.key})"
        with (
            self.shared_lock(),
            self.work.lock(f"{name}.shard{shard.index}of{shard.count}", f"{what} shard {shard}"),
        ):
            yield

    def shared_lock(self) -> WriterLock:
        """The group's writer lock taken shared: held by every shard worker (and by a Ray
        run's coordinator), so that an unsharded writer is refused meanwhile."""
        what = f"stage {self.stage} ({self.key})"
        return self.work.lock(f"{self.stage}-{self.key}", what, shared=True)

    def layout_lock(self) -> WriterLock:
        """Held while growing arrays or adding one (`WorkDir.layout_lock`)."""
        return self.work.layout_lock(self.stage, self.key)

    def ensure_rows(self, n: int) -> None:
        """Grow every per-row array to `n` rows. Only the lock holder calls this."""
        for name in self.group.array_keys():
            array = self.group[name]
            if array.shape[0] < n:
                array.resize((n, *array.shape[1:]))

    def array(
        self,
        name: str,
        row_shape: Sequence[int] = (),
        dtype: Any = "float32",
        fill_value: Any = 0,
    ) -> zarr.Array:
        """The per-row data array `name`, created (one chunk per row) on first use."""
        if name in set(self.group.array_keys()):
            array = self.group[name]
            if tuple(array.shape[1:]) != tuple(row_shape):
                raise CacheError(
                    f"{self.stage}/{self.key}: array {name!r} has row shape {array.shape[1:]}, "
                    f"asked for {tuple(row_shape)}"
                )
            return array
        return self.group.create_array(
            name,
            shape=(self.n_rows, *row_shape),
            chunks=(1, *row_shape) if row_shape else (1,),
            dtype=dtype,
            fill_value=fill_value,
        )

    # -- bookkeeping ------------------------------------------------------------------------
    def expected(self) -> tuple[np.ndarray, np.ndarray]:
        """(key, present) of the manifest rows this group follows.

        A row's key is the manifest's (the video's content key, the caption's text key),
        joined by `ROW_KEY_SEPARATOR` with the group's `row_key_part` where that part is not
        empty. A group opened without its part (`WorkDir.stages()`, for `tcd cache status`)
        checks the manifest key alone (`row_states`)."""
        columns = self.work.manifest.table(self.rows).read(["key", "present"])
        keys, present = columns["key"], columns["present"]
        if self.row_key_part is not None:
            parts = self.row_key_part()
            keys = np.array(
                [
                    f"{k}{ROW_KEY_SEPARATOR}{p}" if p else k
                    for k, p in zip(keys, parts, strict=True)
                ],
                dtype=object,
            )
        return keys, present

    def row_states(
        self, expected: tuple[np.ndarray, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Boolean masks over manifest rows: done, stale, failed, pending, removed; a present
        row is in exactly one of the first four (stale: done for an older key; pending: not
        done, and not failed for its current key). `expected`: the `expected()` the caller
        has already read."""
        want, present = expected or self.expected()
        n = len(want)
        done = np.zeros(n, bool)
        have = np.full(n, "", dtype=object)
        error = np.full(n, "", dtype=object)
        m = min(n, self.n_rows)
        if m:
            # key first: a writer stores data, key, done (fail_row: done, error, key), so a
            # row whose new key is read here already has its new done and error
            have[:m] = read_row_chunks(self.group["key"], m)
            done[:m] = read_row_chunks(self.group["done"], m)
            error[:m] = read_row_chunks(self.group["error"], m)
        if self.row_key_part is None:  # the part is unknown here: compare the manifest keys
            have = np.array([str(k).split(ROW_KEY_SEPARATOR)[0] for k in have], dtype=object)
        match = have == want
        failed_mark = (error != "") & ~done
        return {
            "done": present & done & match,
            "stale": present & done & ~match,
            "failed": present & failed_mark & match,
            "pending": present & ~done & ~(failed_mark & match),
            "removed": ~present & (done | failed_mark),
        }

    def pending(
        self, retry_failed: bool = False, states: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Rows to (re)compute: present rows not done for their current key.

        Rows that failed for their current key are skipped unless `retry_failed`, or unless
        they failed for their video being unreadable (`UNREADABLE_VIDEO`) and the manifest
        now reads it. `states`: the `row_states()` the caller has already read.
        """
        states = states or self.row_states()
        todo = states["pending"] | states["stale"]
        if retry_failed:
            todo |= states["failed"]
        elif self.rows == "videos" and states["failed"].any():
            todo |= self._readable_again(states["failed"])
        return np.flatnonzero(todo)

    def _readable_again(self, failed: np.ndarray) -> np.ndarray:
        """Of the `failed` rows, those failed for their video's manifest error
        (`UNREADABLE_VIDEO`) whose video the manifest now reads."""
        video_error = self.work.manifest.table("videos").column("error")
        again = np.zeros_like(failed)
        for row in np.flatnonzero(failed[: len(video_error)]):
            if not video_error[row]:
                again[row] = str(self.group["error"][row]).startswith(UNREADABLE_VIDEO)
        return again

    def write_row(self, row: int, key: str, data: dict[str, Any]) -> None:
        """Write one row's data, then its key, then the done mark (in that order)."""
        self.write_rows([(row, key, data)])

    def write_rows(self, rows: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
        """Write several (row, key, data) in `write_row`'s order, one step at a time: every
        row's data (and its cleared error), then every key, then every done mark.

        The chunk writes of one step run concurrently: zarr's cost is per chunk write and
        mostly waits on its I/O threads, which concurrent writes overlap. Each step waits for
        the one before,
        so a crash never leaves a row's new key (or a stale row's old done mark) beside data
        that did not reach the disk."""
        if not rows:
            return
        names = {name for _, _, data in rows for name in data} | {"error", "key", "done"}
        opened = {name: self.group[name] for name in names}
        arrays = {name: array.async_array for name, array in opened.items()}
        # zarr keeps no chunk for a value equal to the fill value, so writing the fill value
        # (a cleared error, no warning) to a row without a chunk file changes nothing and is
        # skipped: two of a frames row's six writes, most rows (the frames stage on an H200
        # ran 10% faster, its writer processes waited on half as long: bench.extraction)
        layouts = {name: _row_chunk_files(array) for name, array in opened.items()}
        folders = {name: layout[1] for name, layout in layouts.items() if layout is not None}

        def changes(name: str, row: int, value: Any) -> bool:
            if name not in folders or np.ndim(value) or value != opened[name].fill_value:
                return True
            return (folders[name] / str(row)).exists()

        steps = [
            [(name, row, value) for row, _, data in rows for name, value in data.items()]
            + [("error", row, "") for row, _, _ in rows],
            [("key", row, key) for row, key, _ in rows],
            [("done", row, True) for row, _, _ in rows],
        ]
        steps = [[write for write in step if changes(*write)] for step in steps]

        async def write() -> None:
            for step in steps:
                await asyncio.gather(*(arrays[name].setitem(row, v) for name, row, v in step))

        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no event loop in this thread
            asyncio.run(write())
            return
        with ThreadPoolExecutor(1) as thread:  # called from async code (a notebook)
            thread.submit(asyncio.run, write()).result()

    def fail_row(self, row: int, key: str, message: str) -> None:
        """Record that `row` failed for input `key`; a rerun skips it until the key changes."""
        self.group["done"][row] = False
        self.group["error"][row] = storable_text(message) or "failed (no message)"
        self.group["key"][row] = key

    def reset_rows(self, rows: Iterable[int]) -> int:
        """Forget rows: fill values everywhere (zarr then drops their chunks). done, key and
        error go first (the reverse of a write): a row cut off midway reads as not done,
        never as done over cleared data."""
        count = 0
        names = set(self.group.array_keys())
        marks = [name for name in ("done", "key", "error") if name in names]
        arrays = [self.group[name] for name in marks + sorted(names - set(marks))]
        for row in rows:
            if row >= self.n_rows:
                continue
            for array in arrays:
                array[row] = array.fill_value
            count += 1
        return count

    def warnings(self, done: np.ndarray | None = None) -> list[tuple[int, str]]:
        """(row, warning) of the done rows whose data carries a warning (stages that can
        warn, e.g. of a truncated stream, write a per-row `warning` array). `done`: the
        `row_states()["done"]` mask when the caller has it."""
        if "warning" not in set(self.group.array_keys()):
            return []
        done = self.row_states()["done"] if done is None else done
        warning = self.group["warning"]
        messages = read_row_chunks(warning, warning.shape[0])
        n = min(len(done), len(messages))
        rows = np.flatnonzero(done[:n] & (messages[:n] != ""))
        return [(int(r), str(messages[r])) for r in rows]

    # -- run reports --------------------------------------------------------------------------
    def save_report(self, report: dict[str, Any], shard: Shard | None = None) -> None:
        """Keep a run's report in the group's attributes: one per shard (`"all"` unsharded;
        an unsharded run, or shards of another count, replace the others). One `attrs.put`
        of the whole attribute dict, under the layout lock, read fresh from the store, so
        sharded writers never lose each other's report and the group never lacks the
        attributes `_complete` checks."""
        sharded = shard is not None and shard.count > 1
        with self.layout_lock():
            import zarr

            current = zarr.open_group(
                self.group.store, path=self.group.path, mode="r+", zarr_format=3
            )
            attrs = dict(current.attrs)
            reports = {
                name: kept
                for name, kept in dict(attrs.get("reports", {})).items()
                if sharded and name.endswith(f"/{shard.count}")
            }
            reports[str(shard) if sharded else "all"] = report
            current.attrs.put({**attrs, "reports": reports})

    def reports(self) -> dict[str, dict[str, Any]]:
        """The last run's report per shard (see `save_report`); empty before any run."""
        return dict(self.group.attrs.get("reports", {}))

    def errors(self) -> list[tuple[int, str]]:
        """(row, message) of the rows that failed for their current key."""
        states = self.row_states()
        rows = np.flatnonzero(states["failed"])
        messages = self.group["error"]
        return [(int(r), str(messages[int(r)])) for r in rows]

    def counts(self) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in self.row_states().items()}


def writer_processes(group: StageGroup, processes: int) -> ProcessPoolExecutor:
    """`processes` processes that write `group`'s rows: submit `write_rows_in_writer` with
    the rows. zarr spends milliseconds of Python per row, under the GIL of the process
    writing; a stage whose rows come faster than that (decoded frames on a GPU)
    writes in these so its own process keeps computing. Each opens the group itself and
    exits within `_WATCH_S` of the stage's process dying (a killed stage leaves no writer
    behind to race its rerun)."""
    import multiprocessing

    # fork, as DataLoader workers are: a spawned child would rerun an unguarded __main__
    # script, and one that touches no CUDA is safe to fork from a process holding it
    start = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context(start),
        initializer=_open_in_writer,
        initargs=(str(group.work.path), group.stage, group.key, os.getpid()),
    )


_WATCH_S = 0.2
_writer_group: StageGroup | None = None


def _open_in_writer(path: str, stage: str, key: str, parent: int) -> None:
    global _writer_group
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stage, which stops these
    _writer_group = WorkDir(path).find_stage(stage, key)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_S)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="watch-stage").start()


def write_rows_in_writer(rows: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
    """`StageGroup.write_rows` in a process of `writer_processes`."""
    assert _writer_group is not None, "runs only in a process of writer_processes"
    _writer_group.write_rows(rows)


class WorkDir:
    """A work directory. `WorkDir(path)` opens an existing one; `create=True` makes it."""

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path)
        store_path = self.path / STORE_NAME
        if not store_path.exists():
            if not create:
                raise CacheError(
                    f"{self.path} is not a work directory (no {STORE_NAME}); "
                    "create one with `tcd data textvr|folder ... --work DIR`"
                )
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            import zarr

            self.root = zarr.open_group(store_path, mode="a", zarr_format=3, use_consolidated=False)
        except Exception as exc:  # zarr raises many kinds for a damaged store
            raise CacheError(f"{store_path}: cannot open the Zarr store ({exc})") from exc
        self._manifest: Manifest | None = None

    @property
    def spill_dir(self) -> Path:
        """Where features over the memory budget are copied to be memory-mapped."""
        return self.path / "tmp" / "features"

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest(self.root.require_group("manifest"))
        return self._manifest

    def lock(
        self,
        name: str,
        what: str | None = None,
        timeout: float = 0.0,
        shared: bool = False,
    ) -> WriterLock:
        return WriterLock(self.path / "locks" / f"{name}.lock", what or name, timeout, shared)

    def manifest_lock(self, shared: bool = False, timeout: float = 0.0) -> WriterLock:
        """Exclusive for `tcd data` (which rewrites the manifest); shared for stages reading it."""
        return self.lock("manifest", "the manifest", timeout, shared)

    def stage_lock(self, stage: str, key: str, timeout: float = 0.0) -> WriterLock:
        """The writer lock of one stage group."""
        return self.lock(f"{stage}-{key}", f"stage {stage} ({key})", timeout)

    def layout_lock(self, stage: str, key: str) -> WriterLock:
        """Held while creating a stage group, growing its arrays or adding one: sharded
        writers take turns at it. Never the writer lock, which a shard holds shared for its
        whole run: shards started together on a new group would wait on each other's run."""
        what = f"the layout of stage {stage} ({key})"
        return self.lock(f"{stage}-{key}.layout", what, timeout=60.0)

    # -- stage groups -----------------------------------------------------------------------
    def stage(
        self,
        name: str,
        settings: Any,
        upstream: str | None = None,
        rows: str = "videos",
        row_key_part: RowKeyPart | None = None,
    ) -> StageGroup:
        """The group of stage `name` for these settings and input key, created if missing
        (`row_key_part`: see `StageGroup.expected`)."""
        if rows not in ROW_KINDS:
            raise CacheError(f"unknown row kind {rows!r}; expected one of {ROW_KINDS}")
        key = settings_key(settings, upstream)
        path = f"stages/{name}/{key}"
        found = self.find_stage(name, key, row_key_part)
        if found is not None:
            return found
        with self.layout_lock(name, key):  # another process may create it meanwhile
            try:
                group = self._create_stage(path, name, key, rows, upstream, settings)
                group.row_key_part = row_key_part
                return group
            except OSError as exc:  # disk full, permissions: a half-made group is redone
                raise CacheError(
                    f"cannot create the cache group {path} in {self.path} "
                    f"({exc.strerror or exc}); fix the cause and rerun"
                ) from None

    def find_stage(
        self, name: str, key: str, row_key_part: RowKeyPart | None = None
    ) -> StageGroup | None:
        """The group of stage `name` with this key if it exists (never creates it)."""
        path = f"stages/{name}/{key}"
        if path in self.root and _complete(self.root[path]):
            return StageGroup(self, self.root[path], row_key_part)
        return None

    def _create_stage(
        self, path: str, name: str, key: str, rows: str, upstream: str | None, settings: Any
    ) -> StageGroup:
        """Create the group under the layout lock: the group another process finished
        creating first is taken as it is."""
        if path in self.root:
            if _complete(self.root[path]):
                return StageGroup(self, self.root[path])
            del self.root[path]  # an interrupted creation: start it again
        group = self.root.require_group(path)
        n = len(self.manifest.table(rows))
        for array, dtype, fill in (
            ("key", str, ""),
            ("error", str, ""),
            ("done", "bool", False),
        ):
            group.create_array(array, shape=(n,), chunks=(1,), dtype=dtype, fill_value=fill)
        # attrs last, in one write (attrs.update writes key by key): a group without them is
        # an interrupted creation and is redone
        group.attrs.put(
            {
                "stage": name,
                "key": key,
                "rows": rows,
                "upstream": upstream,
                "settings": to_plain(settings),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
        return StageGroup(self, group)

    def stages(self) -> list[StageGroup]:
        """Every complete stage group in the store, by stage name then creation time."""
        out = []
        if "stages" not in self.root:
            return out
        with warnings.catch_warnings():
            # a folder without metadata (a creation stopped by a full disk) is not a group
            warnings.filterwarnings("ignore", "Object at .* is not recognized", UserWarning)
            for stage_name in sorted(self.root["stages"].group_keys()):
                stage = self.root[f"stages/{stage_name}"]
                for key in stage.group_keys():
                    group = stage[key]
                    if _complete(group):
                        out.append(StageGroup(self, group))
        return sorted(out, key=lambda g: (g.stage, str(g.group.attrs.get("created", ""))))

    # -- reports and maintenance ------------------------------------------------------------
    def status(
        self,
        listed: bool = False,
        row_key_parts: dict[tuple[str, str], RowKeyPart | None] | None = None,
    ) -> dict[str, Any]:
        """Manifest counts and, per stage group, rows done / stale / failed / pending, rows
        with warnings and the last run's reports; `listed`: also every failed and warned row
        (`failed_rows`, `warned_rows`: row, id, message). `row_key_parts`: (stage, key) ->
        the group's `row_key_part`, for the groups whose opener knows it (the current
        settings' groups); the others compare the manifest keys alone."""
        for group in (groups := self.stages()):
            group.row_key_part = (row_key_parts or {}).get((group.stage, group.key))
        manifest = self.manifest
        videos = manifest.videos.read(["present", "split", "error"])
        captions = manifest.captions.read(["present", "split"])
        present = videos["present"]
        splits = {
            str(s): int(((videos["split"] == s) & present).sum())
            for s in sorted(set(videos["split"][present]))
        }
        return {
            "work": str(self.path),
            "dataset": manifest.attrs,
            "videos": {
                "present": int(present.sum()),
                "removed": int((~present).sum()),
                "unreadable": int(((videos["error"] != "") & present).sum()),
                "by_split": splits,
            },
            "captions": {
                "present": int(captions["present"].sum()),
                "removed": int((~captions["present"]).sum()),
            },
            "stages": [self._group_status(group, listed) for group in groups],
        }

    def _group_status(self, group: StageGroup, listed: bool) -> dict[str, Any]:
        states = group.row_states()
        warnings = group.warnings(states["done"])
        entry = {
            "stage": group.stage,
            "key": group.key,
            "rows": group.rows,
            "upstream": group.upstream,
            "created": group.group.attrs.get("created"),
            **{name: int(mask.sum()) for name, mask in states.items()},
            "warnings": len(warnings),
            "reports": group.reports(),
        }
        if listed:
            ids = self.manifest.table(group.rows).column("id")
            errors = group.group["error"]
            entry["failed_rows"] = [
                {"row": int(r), "id": str(ids[r]), "error": str(errors[int(r)])}
                for r in np.flatnonzero(states["failed"])
            ]
            entry["warned_rows"] = [
                {"row": r, "id": str(ids[r]), "warning": message} for r, message in warnings
            ]
        return entry

    def gc(self, dry_run: bool = False) -> dict[str, int]:
        """Clear stage rows whose videos/captions left the manifest; delete leftover temp files.

        Takes the manifest lock and each group's writer lock, so it never races a running stage.
        """
        report = {"rows_cleared": 0, "groups": 0, "partial_files": 0}
        with self.manifest_lock():
            for group in self.stages():
                with group.lock():
                    removed = np.flatnonzero(group.row_states()["removed"])
                    if len(removed):
                        report["groups"] += 1
                        report["rows_cleared"] += (
                            len(removed) if dry_run else group.reset_rows(removed.tolist())
                        )
            # zarr writes chunks to `<name>.<uuid>.partial` then renames; a kill leaves them
            for partial in (self.path / STORE_NAME).rglob("*.partial"):
                report["partial_files"] += 1
                if not dry_run:
                    partial.unlink(missing_ok=True)
        return report
