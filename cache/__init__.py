"""The Zarr work directory: manifest, stage groups, keys, locks and settings.

`cache` is the lowest layer of the project and imports nothing else of ours.
"""

from cache.errors import CacheError, LockBusy, SettingsError, TcdError
from cache.keys import content_key, settings_key, text_key
from cache.lock import WriterLock
from cache.settings import apply_overrides, load_settings
from cache.store import UNREADABLE_VIDEO, Manifest, Shard, StageGroup, Table, WorkDir

__all__ = [
    "CacheError",
    "LockBusy",
    "Manifest",
    "SettingsError",
    "Shard",
    "StageGroup",
    "Table",
    "TcdError",
    "UNREADABLE_VIDEO",
    "WorkDir",
    "WriterLock",
    "apply_overrides",
    "content_key",
    "load_settings",
    "settings_key",
    "text_key",
]
