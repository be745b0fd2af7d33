"""Exports: `sim_matrix.npy` for the TextVR evaluation server, and features to HDF5.

`sim_matrix.npy`: float32 `(n_captions, n_videos)`, row x = x-th caption and column y = y-th
video of the annotation file. With `order="rand"` the columns follow the video order of
`TextVR_test_rand.json` (the scrambled file the server uses); rows stay in caption order.

HDF5 layout (`tcd export --format h5`), one group per split:
    /<split>/video_ids      (N,) str       annotation order
    /<split>/frames         (N, T, Dv) f16 frame embeddings
    /<split>/captions       (N, T, Dt) f16 window-caption embeddings, /caption_mask (N, T)
    /<split>/caption_text   (N, T) str     the window captions
    /<split>/instances      (N, I, Dt) f16 OCR words, /instance_mask (N, I)
    /<split>/queries        (M, Dt) f16    caption/query embeddings, /query_text (M,) str
    /<split>/query_video    (M,) int64     index of each query's video
    /<split>/video_embeddings (N, E) f32   a run's query-independent embeddings (with --run)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from cache.atomic import atomic_path
from heads.data import Features
from heads.metrics import check_finite
from heads.run_dir import RunDir
from retrieval.choices import ColumnOrder
from retrieval.index import RetrievalError, video_embeddings
from retrieval.run_split import WindowLookup


def rand_column_order(video_ids: list[str], rand_file: Path) -> np.ndarray:
    """Indices into `video_ids` in the order the `_rand` file lists its videos."""
    try:
        entries = json.loads(Path(rand_file).read_text(encoding="utf-8"))
        paths = [entry["path"] for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RetrievalError(f"{rand_file}: cannot read the video order ({exc})") from None
    position = {vid: i for i, vid in enumerate(video_ids)}
    missing = [p for p in paths if p not in position]
    repeated = [p for p, n in Counter(paths).items() if n > 1]
    if missing or repeated or len(paths) != len(video_ids):
        raise RetrievalError(
            f"{rand_file}: lists {len(paths)} videos ({len(set(paths))} distinct), the split "
            f"has {len(video_ids)}"
            + (f"; e.g. {missing[0]!r} is not in the split" if missing else "")
            + (f"; e.g. {repeated[0]!r} is listed more than once" if repeated else "")
        )
    return np.array([position[p] for p in paths], dtype=np.int64)


def sim_matrix_columns(
    video_ids: list[str], order: str = "annotation", rand_file: Path | None = None
) -> np.ndarray:
    """The video index of each column of an exported matrix (checked before any scoring)."""
    if order == ColumnOrder.rand:
        if rand_file is None:
            raise RetrievalError("--order rand needs --rand-file TextVR_test_rand.json")
        return rand_column_order(video_ids, rand_file)
    if order != ColumnOrder.annotation:
        raise RetrievalError(f"unknown column order {order!r}; expected annotation or rand")
    return np.arange(len(video_ids))


def write_sim_matrix(
    path: Path,
    sim: np.ndarray,
    video_ids: list[str],
    order: str = "annotation",
    rand_file: Path | None = None,
) -> np.ndarray:
    """Write float32 (captions x videos); returns what was written. Refuses NaN/inf scores
    (the evaluation server would rank them arbitrarily)."""
    columns = sim_matrix_columns(video_ids, order, rand_file)
    sim = np.asarray(sim, dtype=np.float32)
    check_finite(sim, f"the matrix for {path}")
    sim = sim[:, columns]
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, sim)
    return sim


def export_splits(
    path: Path,
    names: list[str],
    features_of: Callable[[str], Features],
    windows: WindowLookup,
    run: RunDir | None = None,
) -> dict[str, int]:
    """`tcd export`: the named splits' features, window caption texts and, given a run, its
    query-independent video embeddings, to one HDF5 file. Returns videos per split."""
    if not names:
        raise RetrievalError("the work dir has no videos to export; add some with `tcd data`")
    splits = {name: features_of(name) for name in names}
    embeddings = None
    if run is not None:
        first = next(iter(splits.values()))
        head, _ = run.load_head(first.frames.shape[-1], first.queries.shape[-1], first.shared_space)
        embeddings = {s: video_embeddings(head, d) for s, d in splits.items() if d.n_videos}
    texts = {split: windows(np.asarray(data.rows)).texts for split, data in splits.items()}
    export_h5(path, splits, texts, embeddings)
    return {split: data.n_videos for split, data in splits.items()}


def export_h5(
    path: Path,
    splits: dict[str, Features],
    caption_text: dict[str, np.ndarray],
    embeddings: dict[str, np.ndarray] | None = None,
) -> None:
    """Write the HDF5 layout of the module docstring, atomically."""
    strings = h5py.string_dtype("utf-8")
    with atomic_path(path, ".h5") as tmp, h5py.File(tmp, "w") as f:
        for split, data in splits.items():
            g = f.create_group(split)
            g.create_dataset(
                "video_ids", data=np.array(data.video_ids, dtype=object), dtype=strings
            )
            for name in (
                "frames",
                "captions",
                "caption_mask",
                "instances",
                "instance_mask",
                "queries",
                "query_video",
            ):
                g.create_dataset(name, data=np.asarray(getattr(data, name)), compression="gzip")
            g.create_dataset(
                "query_text", data=np.array(data.query_text, dtype=object), dtype=strings
            )
            g.create_dataset("caption_text", data=caption_text[split].astype(object), dtype=strings)
            if embeddings and split in embeddings:
                g.create_dataset("video_embeddings", data=embeddings[split])
