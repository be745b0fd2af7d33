"""The manifest stage: a `Dataset` -> the work directory's `videos` and `captions` tables.

Each video gets its content key (size + mtime + hash of the first and last MiB) and its
container metadata. Videos whose key is unchanged since the last run are not probed again.
A video that cannot be read, or a video file that is a symlink to outside the dataset root,
is kept (its row and its place in the split stay fixed) with an `error` message; later
stages record it as failed instead of stopping. (Symlinked folders are fine.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cache import WorkDir, content_key, text_key
from cache.store import UpsertStats
from pipeline.datasets import Dataset, VideoEntry
from pipeline.errors import DatasetError, VideoError
from pipeline.video import probe

PROBE_THREADS = 8  # probing is I/O bound and PyAV releases the GIL


@dataclass
class ManifestReport:
    videos: UpsertStats
    captions: UpsertStats
    unreadable: int

    def __str__(self) -> str:
        return (
            f"videos: {self.videos}; captions: {self.captions}; "
            f"{self.unreadable} unreadable video(s)"
        )


def build_manifest(
    work: WorkDir, dataset: Dataset, progress: bool = True, replace: bool = False
) -> ManifestReport:
    """Insert or update the dataset's videos and captions in `work` (under the manifest lock).

    A work dir holding another dataset (another kind or root) is refused with a
    `DatasetError`, since reading this one would mark all its videos removed, unless
    `replace`."""
    with work.manifest_lock():
        manifest = work.manifest
        if not replace:
            _refuse_another_dataset(work, dataset)
        old = manifest.videos.read(["id", "key", "duration", "fps", "n_frames", "error"])
        known = {
            vid: {"key": k, "duration": d, "fps": f, "n_frames": n, "error": e}
            for vid, k, d, f, n, e in zip(*old.values(), strict=True)
        }
        root = dataset.root.resolve()
        with ThreadPoolExecutor(PROBE_THREADS) as pool:
            records = list(
                tqdm(
                    pool.map(lambda v: _video_record(v, known.get(v.id), root), dataset.videos),
                    total=len(dataset.videos),
                    desc="manifest",
                    unit="video",
                    disable=not progress,
                )
            )
        video_stats = manifest.videos.upsert(records, dataset.splits)
        rows = manifest.videos.row_of()
        caption_records = [
            {
                "id": c.id,
                "key": text_key(c.text),
                "order": c.order,
                "split": c.split,
                "video_row": rows[dataset.videos[c.video].id],
                "text": c.text,
            }
            for c in dataset.captions()
        ]
        caption_stats = manifest.captions.upsert(caption_records, dataset.splits)
        manifest.group.attrs.put({"dataset": dataset.name, "root": str(dataset.root)})
    unreadable = sum(1 for r in records if r["error"])
    return ManifestReport(video_stats, caption_stats, unreadable)


def _refuse_another_dataset(work: WorkDir, dataset: Dataset) -> None:
    """Refuse a dataset of another kind, or one from another root that would mark any held
    video removed: that is another dataset, not an update. The same files under a moved root
    keep their ids (and their caches), and videos leaving the same root are an ordinary
    incremental update, so neither is refused."""
    held = work.manifest.attrs
    if not held or not len(work.manifest.videos):
        return
    videos = work.manifest.videos.read(["id", "present", "split"])
    present = {str(v) for v in videos["id"][videos["present"]]}
    if not present:
        return
    same_root = Path(str(held.get("root", ""))).resolve() == dataset.root.resolve()
    read = videos["present"]
    if dataset.splits is not None:  # the other splits' videos stay as they are
        read = read & np.isin(videos["split"].astype(str), dataset.splits)
    scoped = {str(v) for v in videos["id"][read]}
    kept = scoped & {video.id for video in dataset.videos}
    if held.get("dataset") != dataset.name or (not same_root and kept != present):
        # (another root, even for one split: the other splits' videos would stay from the
        # old root, under the new root's name)
        raise DatasetError(
            f"{work.path} holds {len(present)} video(s) of dataset {held.get('dataset')!r} from "
            f"{held.get('root')}; reading {dataset.name!r} from {dataset.root} would mark "
            f"{len(present) - len(kept)} of them removed or leave them from the old root: "
            "pass --replace to do that, or use another --work"
        )


def _video_record(video: VideoEntry, previous: dict[str, Any] | None, root: Path) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": video.id,
        "order": video.order,
        "split": video.split,
        "path": str(video.path),
        "domain": video.domain,
        "ocr_path": str(video.ocr_path) if video.ocr_path else "",
    }
    target = video.path.resolve()
    if video.path.is_symlink() and not (
        target.is_relative_to(root) or target.is_relative_to(video.path.parent.resolve())
    ):  # a linked folder (Video/ on another disk) is fine; a planted file link is not
        error = f"{video.path}: resolves to {target}, outside the dataset root {root}; not read"
        return {**record, "key": "outside-root", "error": error}
    try:
        key = content_key(video.path)
    except FileNotFoundError:
        return {**record, "key": "missing", "error": f"{video.path}: file not found"}
    except OSError as exc:
        return {**record, "key": "unreadable", "error": f"{video.path}: {exc.strerror or exc}"}
    if previous is not None and previous["key"] == key and not previous["error"]:
        return {**record, **previous}  # unchanged: keep the stored probe
    # (a video that failed its probe is probed again: the failure may have passed, e.g. a
    # file system hiccup or a codec installed since)
    try:
        info = probe(video.path)
    except VideoError as exc:
        return {**record, "key": key, "duration": 0.0, "fps": 0.0, "n_frames": 0, "error": str(exc)}
    return {
        **record,
        "key": key,
        "duration": info.duration,
        "fps": info.fps,
        "n_frames": info.n_frames,
        "error": "",
    }
