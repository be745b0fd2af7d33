"""A trained run's head on one split's cached features (what eval, index, search and report
score), and the run's saved FAISS index of that split, used only while it is current.

`index_<split>.json` (beside `index_<split>.faiss`; both paths from `RunDir`) records what the
index was built from (`IndexSource`): the checkpoint (size and SHA-256 of best.pt), the split,
its videos (ids, manifest rows, content keys, those without features) and the keys of the
feature groups. An index whose record differs from the current state, or that has no record,
is stale: `current_index` rebuilds it (same kind), saves it and says why in one line; a stale
index is never searched. The record holds no timestamps, so the same build writes the same
bytes. Writing order: record removed, index written, record written; a kill in between leaves
an index without a record, which counts as stale.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cache.atomic import atomic_write
from heads.data import Features
from heads.run_dir import RunDir
from retrieval.index import (
    INDEX_KINDS,
    RetrievalError,
    VideoIndex,
    build_index,
    load_index,
    save_index,
    video_embeddings,
)

LOG = logging.getLogger(__name__)


@dataclass
class Windows:
    """The window captions of some videos: texts (n, T) and each window's span in seconds."""

    texts: np.ndarray
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None


WindowLookup = Callable[[np.ndarray], Windows]  # manifest rows -> their window captions


@dataclass(frozen=True)
class IndexSource:
    """What an index of a run's split is built from; an index is used only for an equal one."""

    checkpoint: dict[str, Any]  # RunDir.checkpoint_identity()
    split: str
    videos: list[str]  # ids, annotation order
    rows: list[int]  # manifest rows
    content_keys: list[str]  # manifest `key` of each video
    missing: list[str]  # videos without features (zeros stand in)
    feature_groups: dict[str, str]  # stage -> group key of the features read

    def record(self, kind: str) -> str:
        """The JSON kept beside the index (deterministic: sorted keys, no timestamps)."""
        return json.dumps({"kind": kind, **asdict(self)}, indent=1, sort_keys=True) + "\n"

    def changes_since(self, saved: dict[str, Any]) -> str:
        """What differs from a saved record, in words; "" when the index is current."""
        try:
            if saved["checkpoint"] != self.checkpoint:
                return "the run's checkpoint changed"
            if saved["split"] != self.split or saved["feature_groups"] != self.feature_groups:
                return "it was built from other features"
            old = dict(zip(saved["videos"], saved["content_keys"], strict=True))
            now = dict(zip(self.videos, self.content_keys, strict=True))
            counts = {
                "added": len(now.keys() - old.keys()),
                "removed": len(old.keys() - now.keys()),
                "changed": sum(old[v] != now[v] for v in now.keys() & old.keys()),
            }
            if any(counts.values()):
                return ", ".join(f"{n} video(s) {what}" for what, n in counts.items() if n)
            if saved["videos"] != self.videos or saved["rows"] != self.rows:
                return "the videos were reordered"
            if saved["missing"] != self.missing:
                return "the set of videos with features changed"
        except (KeyError, TypeError, ValueError):
            return "its record is unreadable"
        return ""


@dataclass
class RunSplit:
    """A run's head (best checkpoint) and one split's features, checked to be scoreable."""

    run: RunDir
    split: str
    features: Features
    head: nn.Module
    paths: list[str]  # each video's file, from the manifest
    windows: WindowLookup  # read from the captions cache by the caller (no pipeline here)
    source: IndexSource
    read_only: bool = False  # a run of another work dir: its folder is never written

    @classmethod
    def open(
        cls,
        run: RunDir,
        split: str,
        features: Features,
        manifest_videos: dict[str, np.ndarray],
        feature_groups: dict[str, str],
        windows: WindowLookup,
        need_queries: bool = False,
        read_only: bool = False,
    ) -> RunSplit:
        """`manifest_videos`: the manifest's `key` and `path` columns (all rows). `read_only`:
        the run belongs to another work dir; its saved indexes are neither used nor written."""
        if features.n_videos == 0:
            raise RetrievalError(
                f"split {split!r} has no videos in {run.work}; choose another --split "
                f"(`tcd cache status --work {run.work}` lists the splits)"
            )
        if need_queries and len(features.queries) == 0:
            raise RetrievalError(
                f"split {split!r} has {features.n_videos} videos but no captions to evaluate; "
                "add captions to its annotations or choose another --split"
            )
        # identified before loading: a best.pt replaced meanwhile makes the index stale, never
        # wrongly current
        checkpoint = run.checkpoint_identity()
        head, _ = run.load_head(
            features.frames.shape[-1], features.queries.shape[-1], features.shared_space
        )
        rows = np.asarray(features.rows)
        source = IndexSource(
            checkpoint,
            split,
            list(features.video_ids),
            [int(r) for r in rows],
            [str(k) for k in manifest_videos["key"][rows]],
            list(features.missing),
            dict(feature_groups),
        )
        paths = [str(p) for p in manifest_videos["path"][rows]]
        return cls(run, split, features, head, paths, windows, source, read_only)

    def build_index(self, kind: str) -> VideoIndex:
        """Build the split's index of `kind` and save it with its record."""
        if self.read_only:
            raise RetrievalError(
                f"run {self.run.path} belongs to another work dir; its indexes are not written "
                "from here (search builds an exact one in memory)"
            )
        index = build_index(video_embeddings(self.head, self.features), kind)
        record = self.run.index_meta_path(self.split)
        record.unlink(missing_ok=True)
        save_index(index, self.run.index_path(self.split))
        atomic_write(record, self.source.record(kind))
        return index

    def current_index(self, log: Callable[[str], None] = LOG.warning) -> VideoIndex:
        """The saved index when current; a stale one rebuilt and saved (one line to `log`);
        without a saved index, an exact flat one in memory."""
        path = self.run.index_path(self.split)
        if self.read_only or not path.exists():
            index = build_index(video_embeddings(self.head, self.features), "flat")
        else:
            saved = _read_record(self.run.index_meta_path(self.split))
            why = self.source.changes_since(saved) if saved else "it has no record of its source"
            if why:
                kind = saved.get("kind") if saved and saved.get("kind") in INDEX_KINDS else "flat"
                log(f"{path.name} is stale ({why}); rebuilding it ({kind})")
                index = self.build_index(kind)
            else:
                index = load_index(path)
        index.log = log  # where a search the GPU cannot run says so
        return index


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None
