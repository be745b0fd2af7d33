"""The one loop every stage runs: pick the rows to do, compute them, write them, report.

A stage supplies `produce(rows, clock)`, a generator of `(row, data)` where `data` is a dict
of per-row arrays or a `Failure` (or an exception) for a row that failed. The loop holds the
group's writer lock and the manifest's shared lock, writes the rows on a background thread
while the stage computes (data, then key, then done; rows that come quickly are written in
blocks, a slow row at once: `_BlockWriter`), records failures with their message, and never
lets one bad row stop the others. A row's data may hold a `warning` string (e.g. a truncated
stream): it is written with the row and counted in the report and in `tcd cache status`.

Where the time went (`StageReport`), in wall-clock seconds of the stage's process:
    setup    loading models or engines (the stage marks it with `clock.setting_up()`, and
             the `arrays` function, which loads the model to learn its width, counts here)
    read     waiting on `produce` for its next row, less the setup and compute inside it:
             decoding frames (in DataLoader workers for `frames`), reading OCR JSON or the
             input cache's rows
    compute  what the stage marks with `clock.computing()`: OCR engine calls, window
             captioning, encoder forward passes (with tokenising and resizing)
    write    cache writes the stage waited for: array layout, failure records, and rows
             where the background writer had not finished the block before (its own time
             overlaps the other phases)
`seconds` is the whole run (locks and bookkeeping included), and items/s counts the rows
computed or failed per wall-clock second. A stage may add `figures`, measures over the
group's done rows taken when the run ends (captions: `window_sample_share`). The last run's
report is kept in the group's attributes (one per shard) for `tcd cache status`; timings
never go into arrays, so caches stay bitwise deterministic.
"""

from __future__ import annotations

import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from cache import CacheError, Shard, StageGroup, TcdError, WorkDir
from cache.store import write_rows_in_writer, writer_processes
from pipeline.errors import UpstreamError
from pipeline.settings import UPSTREAM_FAILED, StageGroups, overrides_from_saved


def error_message(exc: BaseException) -> str:
    """The one rule for an error's text: a `TcdError`'s message as it is (it names the file and
    what to do); anything else prefixed with its type, e.g. `ValueError: ...`."""
    if isinstance(exc, TcdError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Failure:
    """A row's failure: its error type (what the report counts) and its message (what the
    row records). Plain data, so it crosses process boundaries (decoding workers)."""

    kind: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        return cls(type(exc).__name__, error_message(exc))


RowResult = dict[str, Any] | Failure | Exception


class StageClock:
    """Seconds of setup and compute that a stage marks itself; `run_stage` adds read and
    write (see the module docstring)."""

    def __init__(self) -> None:
        self.seconds = {"setup": 0.0, "read": 0.0, "compute": 0.0, "write": 0.0}

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def setting_up(self) -> Any:
        return self._phase("setup")

    def computing(self) -> Any:
        return self._phase("compute")

    def writing(self) -> Any:
        return self._phase("write")

    def reading(self, items: Iterable[Any]) -> Iterator[Any]:
        """Yield from `items`, counting the wait for each as read time, less the setup and
        compute the stage marked while it was producing the item."""
        iterator = iter(items)
        while True:
            started = time.perf_counter()
            marked = self.seconds["setup"] + self.seconds["compute"]
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                inside = self.seconds["setup"] + self.seconds["compute"] - marked
                self.seconds["read"] += time.perf_counter() - started - inside
            yield item


Produce = Callable[[np.ndarray, StageClock], Iterable[tuple[int, RowResult]]]

WRITE_BLOCK = 64  # rows written together at most
# what writing a row raises when its arrays cannot hold a value (a string that is not UTF-8,
# a value that does not cast): that row fails alone. Anything else is the stage's own bug
# (a value for an array it never declared): it stops the stage, its rows left pending.
UNSTORABLE = (ValueError, TypeError)
SLOW_ROW_S = 0.25  # a row that took this long to come is written at once


class _BlockWriter:
    """Writes a stage's rows (`StageGroup.write_rows`) in the background while the stage
    computes the next ones: on one thread, or in `processes` writer processes
    (`cache.writer_processes`) for a stage whose rows come faster than one process can both
    compute and write them.

    Rows that come quickly are gathered into blocks of up to `WRITE_BLOCK`, which zarr writes
    in a fraction of the time row by row; a row that took `SLOW_ROW_S` or more to come (an
    OCR'd video) is written at once with any gathered before it, so a slow stage keeps every
    finished row across a crash. At most one block per thread (two per process) is in
    flight: `flush` waits for the oldest beyond that, `wait` for all, and either raises a
    block's `OSError` (a writer process that died is one too); `written(block)` is called
    once a block is on disk. A block that fails otherwise holds a value its arrays cannot
    take (a string that is not UTF-8): its rows are written again one by one, and each row
    that still fails goes to `refused(row, key, error)`, so it fails alone."""

    Block = list[tuple[int, str, dict[str, Any]]]

    def __init__(
        self,
        group: StageGroup,
        written: Callable[[Block], None],
        refused: Callable[[int, str, Exception], None],
        processes: int = 0,
    ):
        self.group, self.written, self.refused = group, written, refused
        self.block: _BlockWriter.Block = []
        self.in_flight: dict[Future, _BlockWriter.Block] = {}
        self.orphaned: _BlockWriter.Block = []  # computed rows a dead writer process dropped
        self.failed: list[int] = []
        if processes:
            self.pool: Executor = writer_processes(group, processes)
            self.write: Callable[[_BlockWriter.Block], None] = write_rows_in_writer
            self.limit = 2 * processes
        else:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"write-{group.stage}")
            self.write, self.limit = group.write_rows, 1
        self.last = time.monotonic()

    def add(self, row: int, key: str, data: dict[str, Any]) -> None:
        slow = time.monotonic() - self.last >= SLOW_ROW_S
        self.block.append((row, key, data))
        if slow or len(self.block) >= WRITE_BLOCK:
            self.flush()
        self.last = time.monotonic()  # the wait for a block in flight is not this row's time

    def flush(self) -> None:
        """Start writing the gathered rows."""
        if self.block:
            while len(self.in_flight) >= self.limit:
                self._collect()
            block, self.block = self.block, []
            try:
                self.in_flight[self.pool.submit(self.write, block)] = block
            except BrokenExecutor as exc:
                self._lost(block, exc)

    def wait(self) -> None:
        """Wait until every block started is written."""
        while self.in_flight:
            self._collect()

    def _collect(self) -> None:
        future = next(iter(self.in_flight))  # the oldest
        block = self.in_flight.pop(future)
        try:
            future.result()
        except BrokenExecutor as exc:
            self._lost(block, exc)
        except OSError:
            self.orphaned += block  # `salvage` tries it again in this process
            self.failed = [row for row, _, _ in block]
            raise
        except UNSTORABLE:  # a row's value: `_write_each` finds which
            self._write_each(block)
            return
        self.written(block)

    def _write_each(self, block: Block) -> None:
        """Write a failed block's rows one at a time, in this process, and report those
        written: a row whose value cannot be stored (`UNSTORABLE`) goes to `refused`; an
        `OSError`, here or in recording a refusal, stops the stage, leaving the rows not
        written yet to `salvage`."""
        kept: _BlockWriter.Block = []
        try:
            for index, (row, key, data) in enumerate(block):
                try:
                    self.group.write_rows([(row, key, data)])
                    kept.append((row, key, data))
                except OSError:
                    self.orphaned += block[index:]
                    self.failed = [row]
                    raise
                except UNSTORABLE as exc:  # this row's failure, not the stage's
                    try:
                        self.refused(row, key, exc)
                    except OSError:
                        self.orphaned += block[index + 1 :]
                        self.failed = [row]
                        raise
        finally:
            self.written(kept)

    def _lost(self, block: Block, exc: BaseException) -> None:
        self.orphaned += block
        self.failed = [row for row, _, _ in block]
        raise OSError(f"a writer process died ({exc})") from exc

    def failed_rows(self) -> str:
        """The rows of the block whose write failed (for the error's message)."""
        if len(self.failed) > 1:
            return f"{len(self.failed)} rows ({min(self.failed)} to {max(self.failed)})"
        return f"row {self.failed[0]}" if self.failed else "rows"

    def salvage(self) -> None:
        """After an error: write in this process what was computed and is not on disk (the
        gathered rows, the blocks a dead writer process dropped or whose write failed), if
        the cache still takes it."""
        rows, self.orphaned, self.block = self.orphaned + self.block, [], []
        for future, block in self.in_flight.items():
            try:
                future.result()
                self.written(block)
            except Exception:  # noqa: BLE001 - written again below, in this process
                rows += block
        self.in_flight.clear()
        if rows:
            try:
                self.group.write_rows(rows)
                self.written(rows)
            except OSError:
                pass
            except UNSTORABLE:  # a row's value: the others are kept
                try:
                    self._write_each(rows)
                except OSError:
                    pass

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass
class StageReport:
    stage: str
    key: str
    rows: str  # what a row is: videos or captions
    computed: int
    failed: int
    up_to_date: int
    seconds: float
    setup_s: float = 0.0
    read_s: float = 0.0
    compute_s: float = 0.0
    write_s: float = 0.0
    warned: int = 0  # rows written with a warning
    failures: dict[str, int] = field(default_factory=dict)  # error type -> rows
    examples: dict[str, str] = field(default_factory=dict)  # error type -> first message
    errors: list[str] = field(default_factory=list)  # every failure message, in row order
    figures: dict[str, float] = field(default_factory=dict)  # stage measures over done rows

    @property
    def items_per_s(self) -> float:
        return (self.computed + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def timing(self) -> str:
        """`setup 1.2, read 0.3, compute 4.0, write 0.2 s; 2.1 videos/s`."""
        phases = ", ".join(
            f"{name} {getattr(self, f'{name}_s'):.1f}"
            for name in ("setup", "read", "compute", "write")
        )
        return f"{phases} s; {self.items_per_s:.1f} {self.rows}/s"

    def failure_counts(self) -> str:
        """`3 VideoError, 1 ModelError` (most frequent first)."""
        return ", ".join(f"{n} {kind}" for kind, n in self.failures.items())

    def __str__(self) -> str:
        if self.computed == 0 and self.failed == 0:
            return f"{self.stage} [{self.key}]: nothing to do, {self.up_to_date} row(s) up to date"
        text = (
            f"{self.stage} [{self.key}]: {self.computed} computed, {self.failed} failed, "
            f"{self.up_to_date} up to date in {self.seconds:.1f} s ({self.timing()})"
        )
        if self.failures:
            text += f"; failed: {self.failure_counts()}"
        if self.warned:
            text += f"; {self.warned} with a warning (see `tcd cache status`)"
        return text + _figures(self.figures)

    def as_dict(self) -> dict[str, Any]:
        """What the stage group keeps of its last run (no per-row messages: rows hold them)."""
        data = asdict(self)
        del data["errors"]
        return {**data, "items_per_s": self.items_per_s, "finished": time.strftime("%FT%T")}


# Figures named `over:<prefix>` are no measures of their own: how many items the `*_share`
# figures whose names start with <prefix> are over (the longest such prefix; `over:` for
# the rest), so that the shares of shards or Ray tasks merge by weight.
OVER = "over:"


def merge_figures(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """One run's figures from its shards' or tasks' (in finishing order): each share weighted
    by the count it is over, where every part says (`OVER`; a share a part lacks is 0 there);
    otherwise the last part's, a measure of the whole group once every part has written."""
    parts = [part for part in parts if part]
    if not parts:
        return {}
    if not all(OVER in part for part in parts):
        return dict(parts[-1])
    counts = dict.fromkeys(name for part in parts for name in part if name.startswith(OVER))
    merged = {name: sum(part.get(name, 0) for part in parts) for name in counts}
    for name in dict.fromkeys(n for part in parts for n in part if not n.startswith(OVER)):
        over = max((c for c in counts if name.startswith(c[len(OVER) :])), key=len, default=OVER)
        total = merged[over]
        weighted = sum(part.get(name, 0.0) * part.get(over, 0) for part in parts)
        merged[name] = weighted / total if total else 0.0
    shares = {name: value for name, value in merged.items() if name not in counts}
    return {**shares, **{name: merged[name] for name in counts}}  # the counts last


def _figures(figures: dict[str, float]) -> str:
    """`; window sample share 1.00` (nothing without figures)."""
    return "".join(
        f"; {name.replace('_', ' ')} {value:.2f}"
        for name, value in figures.items()
        if not name.startswith(OVER)
    )


def last_run(reports: dict[str, dict[str, Any]]) -> str:
    """One short line for the reports a group keeps (one per shard), for `tcd cache status`:
    `12 in 3.1 s, 3.9/s (read 0.4, compute 2.2, write 0.3); 1 VideoError`, then the figures
    over the shards (`merge_figures`; `; window sample share 1.00`)."""
    if not reports:
        return "-"
    runs = list(reports.values())
    done = sum(r["computed"] + r["failed"] for r in runs)
    seconds = max(r["seconds"] for r in runs)  # shards run side by side
    phases = ", ".join(
        f"{name} {sum(r[f'{name}_s'] for r in runs):.1f}" for name in ("read", "compute", "write")
    )
    failures: Counter[str] = Counter()
    for run in runs:
        failures.update(run["failures"])
    text = f"{done} in {seconds:.1f} s, {sum(r['items_per_s'] for r in runs):.1f}/s ({phases})"
    shards = f" over {len(runs)} shards" if len(runs) > 1 else ""
    kinds = ", ".join(f"{n} {kind}" for kind, n in failures.most_common())
    runs.sort(key=lambda r: str(r.get("finished", "")))
    figures = merge_figures([r.get("figures", {}) for r in runs])
    return text + shards + (f"; {kinds}" if kinds else "") + _figures(figures)


class Upstream:
    """The stage a stage reads (OCR for captions, captions for their encoding): checked up
    front, so a stage run before it is refused with the command to run first; a row whose
    upstream failed fails with the upstream's message; a missing upstream row is never
    recorded as a failure."""

    # what each stage that is read is called in messages, and the command that computes it
    NAMES = {"ocr": ("OCR", "tcd ocr"), "captions": ("window captions", "tcd caption")}

    def __init__(self, groups: StageGroups, stage: str):
        _, upstream, self.rows = groups.link(stage)
        assert upstream is not None, f"{stage} reads no other stage"
        self.groups, self.stage, self.name = groups, stage, upstream
        self.what, self.command = self.NAMES[upstream]

    def require(self, retry_failed: bool = False, shard: Shard | None = None) -> StageGroup:
        """The upstream group, or `UpstreamError` when rows the stage would compute have
        nothing there (neither done nor failed for their current key). Creates nothing."""
        group, source = self.groups.find(self.stage), self.groups.find(self.name)
        if group is not None:
            todo = self.groups.pending(self.stage, retry_failed)
        else:
            todo = np.flatnonzero(self.groups.work.manifest.table(self.rows).column("present"))
        if shard is not None:
            todo = shard.select(todo)
        states = source.row_states() if source is not None else {}
        missing = int((~(states["done"] | states["failed"]))[todo].sum()) if states else len(todo)
        if missing:
            path = self.groups.work.path
            sets = overrides_from_saved(path, self.groups.settings)
            given = "".join(f" --set {shlex.quote(item)}" for item in sets)
            raise UpstreamError(
                f"{missing} {self.rows[:-1]}(s) have no {self.what} for these settings; "
                f"run `{self.command} --work {path}{given}` first"
            )
        self.group = source or self.groups.group(self.name)
        self.states = states or self.group.row_states()
        return self.group

    def has(self, row: int) -> bool:
        """Whether the upstream row is there (done, or failed): else it stays pending, as do
        rows added to the manifest after the check (past the end of its snapshot)."""
        done, failed = self.states["done"], self.states["failed"]
        return row < len(done) and bool(done[row] or failed[row])

    def check(self, row: int) -> None:
        """Raise the upstream's failure of `row` as this row's (`UpstreamError`, recorded
        with `UPSTREAM_FAILED`: the row is redone once the upstream row is done)."""
        if not self.states["done"][row]:
            message = str(self.group.group["error"][row]) or "failed"
            what = f"no {self.what} for this {self.rows[:-1]}: {message}"
            raise UpstreamError(UPSTREAM_FAILED + what)


def run_stage(
    work: WorkDir,
    group: StageGroup,
    arrays: dict[str, tuple[tuple[int, ...], Any, Any]] | Callable[[], dict[str, Any]],
    produce: Produce,
    retry_failed: bool = False,
    progress: bool = True,
    shard: Shard | None = None,
    figures: Callable[[], dict[str, float]] | None = None,
    write_processes: int = 0,
    upstream: Upstream | None = None,
) -> StageReport:
    """Compute the pending rows of `group` (only this shard's rows when `shard` is given).

    `arrays`: name -> (row shape, dtype, fill value), or a function returning that mapping,
    called only when there is work (so a no-op rerun never loads a model to learn a width).
    `figures`: called once the rows are written, its measures (finite floats) go into the
    report (`StageReport.figures`). `write_processes`: write rows in that many processes
    rather than on a thread of this one (`_BlockWriter`). `upstream`: the stage it reads
    (its rows failed by an upstream failure are redone once the upstream row is done).
    A failed write (disk full, I/O error) stops the stage with a `CacheError`; the rows
    written before it stay done, and the rows being written stay pending for the rerun.
    """
    started = time.monotonic()
    clock = StageClock()
    name = group.stage if shard is None or shard.count == 1 else f"{group.stage} {shard}"
    with work.manifest_lock(shared=True), group.writing(shard):
        keys, present = group.expected()
        if upstream is None:
            todo = group.pending(retry_failed)
        else:
            todo = upstream.groups.pending(upstream.stage, retry_failed)
        mine = np.flatnonzero(present)
        if shard is not None:
            todo, mine = shard.select(todo), shard.select(mine)
        computed, warned, failures = 0, 0, []
        rows = produce(todo, clock) if len(todo) else iter(())
        bar = tqdm(
            total=len(todo),
            desc=name,
            unit=group.rows.rstrip("s"),
            disable=not progress or not len(todo),
        )

        def written(block: _BlockWriter.Block) -> None:
            nonlocal computed, warned
            computed += len(block)
            warned += sum(bool(data.get("warning")) for _, _, data in block)
            bar.update(len(block))

        def record_failure(row: int, key: str, failure: Failure) -> None:
            group.fail_row(row, key, failure.message)
            failures.append(failure)
            bar.update(1)

        def refused(row: int, key: str, exc: Exception) -> None:
            """A row the cache cannot take (a value its array cannot hold) fails alone."""
            message = f"cannot write the row to the cache: {error_message(exc)}"
            record_failure(row, key, Failure(type(exc).__name__, message))

        writer = _BlockWriter(group, written, refused, write_processes if len(todo) else 0)

        @contextmanager
        def writing_to_cache(what: str | Callable[[], str]) -> Iterator[None]:
            """An `OSError` of these writes (disk full, I/O) -> `CacheError`; the computation's
            own errors are not turned into it."""
            try:
                with clock.writing():
                    yield
            except OSError as exc:
                rows = what if isinstance(what, str) else what()
                writer.salvage()  # before counting: the rows it still writes are kept too
                raise CacheError(
                    f"{name} [{group.key}]: cannot write {rows} to {work.path} "
                    f"({exc.strerror or exc}); the {computed} row(s) written so far are kept: "
                    "fix the cause (e.g. free disk space) and rerun to finish"
                ) from None

        try:
            if len(todo):
                with clock.setting_up():
                    layout = arrays() if callable(arrays) else arrays
                with writing_to_cache("its arrays"), group.layout_lock():
                    group.ensure_rows(len(keys))
                    for array, (shape, dtype, fill) in layout.items():
                        group.array(array, shape, dtype, fill)
            for row, data in clock.reading(rows):
                if isinstance(data, dict):
                    with writing_to_cache(writer.failed_rows):
                        writer.add(row, str(keys[row]), data)
                else:
                    failure = data if isinstance(data, Failure) else Failure.of(data)
                    with writing_to_cache(f"row {row}"):
                        record_failure(row, str(keys[row]), failure)
            with writing_to_cache(writer.failed_rows):
                writer.flush()
                writer.wait()
        except BaseException:
            writer.salvage()  # the rows computed before the error are kept
            raise
        finally:
            writer.close()
            bar.close()
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # stops decoding workers even when a write failed
        measured = figures() if figures is not None else {}
        report = StageReport(
            name,
            group.key,
            group.rows,
            computed,
            len(failures),
            len(mine) - len(todo),
            time.monotonic() - started,
            **{f"{phase}_s": seconds for phase, seconds in clock.seconds.items()},
            warned=warned,
            failures=dict(Counter(f.kind for f in failures).most_common()),
            examples=_first_message_by_kind(failures),
            errors=[f.message for f in failures],
            figures=measured,
        )
        if len(todo):
            with writing_to_cache("its run report"):
                group.save_report(report.as_dict(), shard)
    return report


def idle_report(groups: StageGroups, stage: str, shard: Shard | None = None) -> StageReport:
    """The report `run_stage` gives a group with nothing to do (`StageGroups.todo` is 0),
    made without loading the stage: `tcd extract` skips a stage's imports and models so."""
    _, _, rows = groups.link(stage)
    present = np.flatnonzero(groups.work.manifest.table(rows).column("present"))
    name = stage if shard is None or shard.count == 1 else f"{stage} {shard}"
    up_to_date = len(shard.select(present) if shard is not None else present)
    return StageReport(name, StageGroups.keys(groups.settings)[stage], rows, 0, 0, up_to_date, 0.0)


def _first_message_by_kind(failures: list[Failure]) -> dict[str, str]:
    examples: dict[str, str] = {}
    for failure in failures:
        examples.setdefault(failure.kind, failure.message)
    return examples


def guarded(row: int, compute: Callable[[], dict[str, Any]]) -> tuple[int, RowResult]:
    """Run one row's computation, turning any error into the row's failure record."""
    try:
        return row, compute()
    except Exception as exc:  # one bad video must never stop the stage
        return row, Failure.of(exc)
