"""A writer lock per stage group (and one for the manifest), based on `flock`.

The kernel drops an `flock` when its process dies, so a killed run never leaves a stale lock.
The lock file records who holds it, so the refusal can say which process to wait for.

A forked child (a DataLoader worker, a writer process) would share the lock's open file, and
keep the lock after its parent was killed until it noticed (seconds later): a rerun would be
refused, naming a dead process. So a forked child closes its copies of the held locks' files
at once (`os.register_at_fork`); the children write rows under their parent's lock, never
taking or releasing one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from cache.atomic import pid_running
from cache.errors import LockBusy

_HELD: set[int] = set()  # the files of the locks this process holds


def _close_held_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class WriterLock:
    """Non-reentrant lock on `path` (exclusive, or shared for readers). A context manager.

    `timeout=0` refuses at once when the lock is held; a positive timeout waits that many
    seconds, polling, before refusing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        what: str,
        timeout: float = 0.0,
        shared: bool = False,
    ):
        self.path = Path(path)
        self.what = what
        self.timeout = timeout
        self.shared = shared  # readers share the lock; a writer needs it alone
        self._fd: int | None = None
        self._pid = 0  # the process holding it

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(
                    fd,
                    (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB,
                )
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockBusy(
                        f"{self.what} is in use by another process ({holder}); "
                        f"wait for it to finish (lock file {self.path})"
                    ) from None
                try:
                    time.sleep(0.1)
                except BaseException:  # interrupted while waiting: the file is not left open
                    os.close(fd)
                    raise
        try:
            if not self.shared:
                info = {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.time(),
                }
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
        except BaseException:  # e.g. a full disk: give the lock back rather than keep it
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)

    def release(self) -> None:
        if self._fd is not None and self._pid == os.getpid():  # a forked child closed it
            _HELD.discard(self._fd)
            if not self.shared:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """Who holds the lock, for the refusal: the exclusive holder's record, unless it is of
    a process of this host that no longer runs (killed, it left its record behind: the
    lock is held shared now, and shared holders write none)."""
    shared = "a reader or a sharded worker"
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host = int(info["pid"]), info["host"]
    except (ValueError, KeyError, TypeError):
        return shared
    if host == socket.gethostname() and not pid_running(pid):
        return shared
    return f"pid {pid} on {host}"
