"""Keys that decide whether cached work is still valid.

- content key of a video: size + mtime + a hash of its first and last MiB (cheap, catches edits);
- text key of a caption: a hash of its text;
- directory key of a local model: its files' names and content keys (`directory_key`);
- settings key of a stage: a stable hash of its resolved settings plus the key of its input stage.

A setting added after caches exist is declared with `added_setting(default)`: the key leaves it
out while it holds that default, so adding it keeps every existing cache valid, and any other
value keys the group like every setting. A setting whose default is not what ran before it
existed (a new default behaviour) names that value: `added_setting(default, before=old)`; the
key leaves it out at `old` instead, and a settings file written before it existed reads as
`old` (`as_written_before`), so a work dir keeps computing what it computed.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import typing
from pathlib import Path
from stat import S_ISREG
from typing import Any

EDGE_BYTES = 1 << 20  # 1 MiB read from each end of a file


def content_key(path: str | os.PathLike[str]) -> str:
    """`<size>-<mtime_ns>-<blake2b of first and last MiB>`; raises OSError if unreadable or
    not a regular file (reading a FIFO named like a video would wait forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, unread
    try:
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    except OSError:
        os.close(fd)
        raise
    digest = hashlib.blake2b(digest_size=8)
    with open(fd, "rb") as f:
        digest.update(f.read(EDGE_BYTES))
        if stat.st_size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, stat.st_size - EDGE_BYTES))
            digest.update(f.read(EDGE_BYTES))
    return f"{stat.st_size}-{stat.st_mtime_ns}-{digest.hexdigest()}"


def directory_key(path: str | os.PathLike[str]) -> str:
    """16-hex key of what a directory holds (a local model's config, weights, tokenizer): each
    file's relative path and content key, hidden entries left out (a download's `.cache/`).
    As for a video, new weights key anew, and so does a copy that does not keep mtimes (a
    plain `cp -r`; `cp -a` and `rsync -a` keep them). Raises OSError if unreadable."""
    root = Path(path).resolve()
    digest = hashlib.blake2b(digest_size=8)
    for file in sorted(root.rglob("*")):
        name = file.relative_to(root)
        if file.is_file() and not any(part.startswith(".") for part in name.parts):
            digest.update(f"{name}\0{content_key(file)}\0".encode())
    return digest.hexdigest()


def text_key(text: str) -> str:
    """Key of a caption row: changes exactly when the text changes."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


ADDED = "tcd_added_setting"  # dataclass field metadata: left out of keys at its value before
BEFORE = "tcd_before"  # ... that value, where it is not the default
_UNSET = object()


def added_setting(default: Any, before: Any = _UNSET) -> Any:
    """A dataclass field for a setting added after caches exist, whose behaviour before it
    existed was `before` (by default: `default`); see the module docstring."""
    metadata = {ADDED: True} if before is _UNSET else {ADDED: True, BEFORE: before}
    return dataclasses.field(default=default, metadata=metadata)


def value_before(field: dataclasses.Field) -> Any:
    """The value an added setting had in effect before it existed."""
    return field.metadata.get(BEFORE, field.default)


def keyed_form(value: Any) -> Any:
    """What keys compare: `to_plain(value)`, less the added settings that hold their value
    before they existed, at any depth."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: keyed_form(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (f.metadata.get(ADDED) and getattr(value, f.name) == value_before(f))
        }
    if isinstance(value, dict):
        return {str(k): keyed_form(v) for k, v in value.items()}
    return to_plain(value)


def to_plain(value: Any) -> Any:
    """Dataclasses, tuples and paths -> dicts, lists and strings (JSON/TOML friendly)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def settings_key(settings: Any, upstream: str | None = None) -> str:
    """Stable 16-hex key of a settings dataclass (or dict) chained to its input stage's key.

    The class name is part of the key, so two stages with equal fields never share a group.
    """
    payload = {
        "type": type(settings).__name__,
        "settings": keyed_form(settings),
        "upstream": upstream,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def as_written_before(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """A settings table for dataclass `cls` written by an earlier version (a work dir's saved
    settings, a run's config), with each added setting it lacks at its value before it
    existed, at any depth: what that version ran with, not today's default."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        nested = dataclasses.is_dataclass(hints[f.name])
        if nested and isinstance(out.get(f.name, {}), dict):
            out[f.name] = as_written_before(hints[f.name], out.get(f.name, {}))
        elif f.name not in out and BEFORE in f.metadata:
            out[f.name] = to_plain(f.metadata[BEFORE])
    return out


def only_added_missing(cls: type, data: dict[str, Any]) -> bool:
    """Whether a parsed settings table for dataclass `cls` names every setting except, at
    most, some declared with `added_setting` (what an older version wrote), at any depth."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if not f.metadata.get(ADDED):
                return False
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(data[f.name], dict):
            if not only_added_missing(hints[f.name], data[f.name]):
                return False
    return True
