"""One way to write a file so that a kill never leaves it half-written: write a temporary file
beside it, then rename it over the target (a rename within one directory is atomic on POSIX).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path

_HOST = socket.gethostname().replace(".", "_") or "host"


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is
    removed. `suffix` keeps a writer that insists on an extension happy (`.npy`, `.h5`).
    Host and pid in the name keep concurrent writers (sharded workers, on one machine or on
    several sharing the work dir) off each other's file; the files a killed writer of this
    host left behind are removed by the next write of the same target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    tmp = path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_orphans(path: Path) -> None:
    """Delete `<name>.<host>.<pid>.tmp*` siblings of this host whose writer no longer runs
    (another host's processes cannot be asked, so their files are left alone)."""
    prefix = f"{path.name}.{_HOST}."
    for old in path.parent.glob(f"{glob_escape(prefix)}*.tmp*"):
        pid = old.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not pid_running(int(pid)):
            old.unlink(missing_ok=True)


def pid_running(pid: int) -> bool:
    """Whether process `pid` of this host runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def atomic_write(path: str | os.PathLike[str], data: str | bytes | Callable[[Path], None]) -> Path:
    """Write text, bytes, or whatever `data(tmp_path)` writes, atomically to `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
    return path
