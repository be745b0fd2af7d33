"""The one loop every stage runs: pick the rows to do, compute them, write them, report.

A stage supplies `produce(rows)`, a generator of `(row, data)` where `data` is a dict of
per-row arrays or an `Exception` for a row that failed. The loop holds the group's writer
lock and the manifest's shared lock, writes each row as it arrives (data, then key, then
done), records failures with their message, and never lets one bad row stop the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from cache import CacheError, Shard, StageGroup, WorkDir

Produce = Callable[[np.ndarray], Iterable[tuple[int, dict[str, Any] | Exception]]]


@dataclass
class StageReport:
    stage: str
    key: str
    computed: int
    failed: int
    up_to_date: int
    seconds: float
    errors: list[str]

    def __str__(self) -> str:
        if self.computed == 0 and self.failed == 0:
            return f"{self.stage} [{self.key}]: nothing to do, {self.up_to_date} row(s) up to date"
        return (
            f"{self.stage} [{self.key}]: {self.computed} computed, {self.failed} failed, "
            f"{self.up_to_date} up to date in {self.seconds:.1f} s"
        )


def run_stage(
    work: WorkDir,
    group: StageGroup,
    arrays: dict[str, tuple[tuple[int, ...], Any, Any]] | Callable[[], dict[str, Any]],
    produce: Produce,
    retry_failed: bool = False,
    progress: bool = True,
    shard: Shard | None = None,
) -> StageReport:
    """Compute the pending rows of `group` (only this shard's rows when `shard` is given).

    `arrays`: name -> (row shape, dtype, fill value), or a function returning that mapping,
    called only when there is work (so a no-op rerun never loads a model to learn a width).
    A failed write (disk full, I/O error) stops the stage with a `CacheError`; the rows
    written before it stay done, and the row being written stays pending for the rerun.
    """
    started = time.monotonic()
    name = group.stage if shard is None or shard.count == 1 else f"{group.stage} {shard}"
    with work.manifest_lock(shared=True), group.writing(shard):
        keys, present = group.expected()
        todo, mine = group.pending(retry_failed), np.flatnonzero(present)
        if shard is not None:
            todo, mine = shard.select(todo), shard.select(mine)
        computed, errors = 0, []
        rows = produce(todo) if len(todo) else iter(())
        bar = tqdm(
            total=len(todo),
            desc=name,
            unit=group.rows.rstrip("s"),
            disable=not progress or not len(todo),
        )

        @contextmanager
        def writing_to_cache(what: str) -> Iterator[None]:
            """An `OSError` of these writes (disk full, I/O) -> `CacheError`; the computation's
            own errors are not turned into it."""
            try:
                yield
            except OSError as exc:
                raise CacheError(
                    f"{name} [{group.key}]: cannot write {what} to {work.path} "
                    f"({exc.strerror or exc}); the {computed} row(s) written so far are kept: "
                    "fix the cause (e.g. free disk space) and rerun to finish"
                ) from None

        try:
            if len(todo):
                layout = arrays() if callable(arrays) else arrays
                with writing_to_cache("its arrays"), group.layout_lock():
                    group.ensure_rows(len(keys))
                    for array, (shape, dtype, fill) in layout.items():
                        group.array(array, shape, dtype, fill)
            for row, data in rows:
                with writing_to_cache(f"row {row}"):
                    if isinstance(data, Exception):
                        message = str(data) or type(data).__name__
                        group.fail_row(row, str(keys[row]), message)
                        errors.append(message)
                    else:
                        group.write_row(row, str(keys[row]), data)
                        computed += 1
                bar.update(1)
        finally:
            bar.close()
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # stops decoding workers even when a write failed
    up_to_date = len(mine) - len(todo)
    return StageReport(
        name, group.key, computed, len(errors), up_to_date, time.monotonic() - started, errors
    )


def guarded(
    row: int, compute: Callable[[], dict[str, Any]]
) -> tuple[int, dict[str, Any] | Exception]:
    """Run one row's computation, turning any error into the row's failure record."""
    try:
        return row, compute()
    except Exception as exc:  # one bad video must never stop the stage
        if type(exc).__module__.startswith(("pipeline", "cache")):
            return row, exc
        return row, RuntimeError(f"{type(exc).__name__}: {exc}")
