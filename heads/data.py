"""Cached features of one split, loaded into memory for head training and scoring.

`heads` reads caches only (never `pipeline`): the caller passes the stage groups to read.
Videos come in annotation order (`order`), queries likewise; `query_video[i]` is the index
of query i's video. A video whose features are missing (failed or not computed) keeps its
place with zero features, and is counted in `missing`, so matrix columns never shift.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cache import Manifest, StageGroup
from cache.errors import TcdError


class FeatureError(TcdError):
    """The caches lack features a head needs."""

    @classmethod
    def no_group(cls, stage: str, key: str) -> FeatureError:
        """The settings' group of `stage` does not exist or holds no features yet."""
        return cls(
            f"no {stage} features for the current settings (group {key}); run `tcd ocr`, "
            "`tcd caption` and `tcd encode` on this work dir first"
        )


SPILL_CHUNK = 1024  # rows read from zarr at a time


@dataclass
class Features:
    video_ids: list[str]
    frames: np.ndarray  # (N, T, Dv) float16
    captions: np.ndarray  # (N, T, Dt) float16
    caption_mask: np.ndarray  # (N, T) bool
    instances: np.ndarray  # (N, I, Dt) float16
    instance_mask: np.ndarray  # (N, I) bool
    queries: np.ndarray  # (M, Dt) float16
    query_video: np.ndarray  # (M,) int64
    query_text: list[str]
    missing: list[str]  # ids of videos without features (zeros stand in)
    rows: np.ndarray | None = None  # manifest row of each video
    query_ids: list[str] | None = None  # caption id of each query (`<video id>#<k>`)
    # frames and texts come from one two-tower model (CLIP image and text towers), so a
    # query can be matched against frames without training (the zero-shot S_TV)
    shared_space: bool = False
    # mean share of caption windows holding an OCR sample (NaN: unknown), for the study tables
    window_sample_share: float = float("nan")
    # the key of each stage group read (frames, ocr_text, queries): what a run trained on
    # them records, so it is trained again, not taken as finished, on other features
    source: dict[str, str] = field(default_factory=dict)
    # which rows of those groups: `SplitRows.data_key` (a run records it too, so added videos,
    # edited captions or newly encoded videos train it again)
    data_key: str = ""

    @property
    def n_videos(self) -> int:
        return len(self.video_ids)

    def video_batch(
        self, index: np.ndarray | slice, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """The head's video inputs for some videos, as float32 tensors."""
        return {
            "frames": torch.from_numpy(self.frames[index]).float().to(device),
            "captions": torch.from_numpy(self.captions[index]).float().to(device),
            "caption_mask": torch.from_numpy(self.caption_mask[index]).to(device),
            "instances": torch.from_numpy(self.instances[index]).float().to(device),
            "instance_mask": torch.from_numpy(self.instance_mask[index]).to(device),
        }

    def subset(self, videos: np.ndarray) -> Features:
        """The features of some videos and of their queries (used for the validation split)."""
        videos = np.asarray(videos)
        remap = np.full(self.n_videos, -1)
        remap[videos] = np.arange(len(videos))
        keep = np.flatnonzero(np.isin(self.query_video, videos))
        return Features(
            [self.video_ids[i] for i in videos],
            self.frames[videos],
            self.captions[videos],
            self.caption_mask[videos],
            self.instances[videos],
            self.instance_mask[videos],
            self.queries[keep],
            remap[self.query_video[keep]],
            [self.query_text[i] for i in keep],
            [v for v in self.missing if v in {self.video_ids[i] for i in videos}],
            None if self.rows is None else self.rows[videos],
            None if self.query_ids is None else [self.query_ids[i] for i in keep],
            self.shared_space,
            self.window_sample_share,
        )


@dataclass
class SplitRows:
    """A split's rows in the manifest and in the feature groups: its present videos and their
    captions in annotation order, and which videos have features (done in frames and
    ocr_text)."""

    videos: dict[str, np.ndarray]  # manifest video columns (all rows)
    rows: np.ndarray  # the split's video rows, annotation order
    ok: np.ndarray  # (len(rows),) bool: the video has features
    row_keys: np.ndarray  # (len(rows),) the ocr_text group's key of each row
    captions: dict[str, np.ndarray]  # manifest caption columns (all rows)
    query_rows: np.ndarray  # the split's caption rows of those videos, annotation order

    @classmethod
    def read(
        cls, manifest: Manifest, frames: StageGroup, ocr_text: StageGroup, split: str
    ) -> SplitRows:
        videos = manifest.videos.read(["id", "split", "present", "order"])
        rows = np.flatnonzero((videos["split"] == split) & videos["present"])
        rows = rows[np.argsort(videos["order"][rows], kind="stable")]
        # ocr_text's row key is the video's content key joined with what else keys its text
        # (an importing engine's OCR file), so an edited OCR file changes it too
        text_keys = ocr_text.expected()
        ok = frames.row_states()["done"][rows] & ocr_text.row_states(text_keys)["done"][rows]
        row_keys = text_keys[0][rows]
        captions = manifest.captions.read(
            ["id", "split", "present", "order", "video_row", "text", "key"]
        )
        q_rows = np.flatnonzero((captions["split"] == split) & captions["present"])
        q_rows = q_rows[np.argsort(captions["order"][q_rows], kind="stable")]
        in_split = set(rows.tolist())
        q_rows = np.array(
            [r for r in q_rows if int(captions["video_row"][r]) in in_split], dtype=np.int64
        )
        return cls(videos, rows, ok, row_keys, captions, q_rows)

    def data_key(self) -> str:
        """What a head trained on these rows learned from beyond the groups' keys: the videos
        (id, content key, whether they have features) and captions (id, text key), in order."""
        content = [
            [str(v) for v in self.videos["id"][self.rows]],
            [str(k) for k in self.row_keys],
            self.ok.tolist(),
            [str(c) for c in self.captions["id"][self.query_rows]],
            [str(k) for k in self.captions["key"][self.query_rows]],
        ]
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


def _private_memmap(folder: Path, prefix: str, dtype: np.dtype, shape: tuple) -> np.memmap:
    """A zeroed array memory-mapped from a file of this process alone, removed from `folder` as
    soon as it is mapped: a fixed name was opened (and truncated) by a second `tcd` reading
    the same features while a first one had it mapped, and every file outlived its process.
    The space is freed when the process ends (POSIX keeps an unlinked mapped file)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=".npy", dir=folder)
    os.close(handle)
    try:
        return np.lib.format.open_memmap(name, mode="w+", dtype=dtype, shape=shape)
    finally:
        os.unlink(name)


def load_features(
    manifest: Manifest,
    frames: StageGroup,
    ocr_text: StageGroup,
    queries: StageGroup,
    split: str,
    memory_budget: float = 8e9,
    spill_dir: Path | None = None,
    shared_space: bool = False,
    require_queries: bool = True,
) -> Features:
    """Read the split's videos and queries from the given groups (annotation order).
    `shared_space`: the frame and text encoders are one two-tower model (see `Features`).
    Queries not encoded yet are refused unless `require_queries` is false (free-text search
    and indexing read no query): they are then left out.

    When the per-video arrays would exceed `memory_budget` bytes and `spill_dir` is given, they
    are copied (in row chunks) to `.npy` files there and opened memory-mapped instead.
    """
    selected = SplitRows.read(manifest, frames, ocr_text, split)
    videos, rows, ok = selected.videos, selected.rows, selected.ok
    captions, q_rows = selected.captions, selected.query_rows
    has_queries = bool(((captions["split"] == split) & captions["present"]).any())
    needed = [(frames, "frames"), (ocr_text, "captions")]
    # a collection read without captions has no query rows, so encode made no `query` array
    needed += [(queries, "query")] if has_queries and require_queries else []
    for group, name in needed:
        if name not in set(group.group.array_keys()):
            raise FeatureError.no_group(group.stage, group.key)

    per_video = [(frames, "frames"), (ocr_text, "captions"), (ocr_text, "instances")]
    size = sum(
        len(rows) * np.prod(g.group[n].shape[1:]) * g.group[n].dtype.itemsize for g, n in per_video
    )
    spill = spill_dir is not None and size > memory_budget

    def take(group: StageGroup, name: str) -> np.ndarray:
        array = group.group[name]
        shape = (len(rows), *array.shape[1:])
        if spill:
            out = _private_memmap(spill_dir, f"{split}-{group.stage}-{name}-", array.dtype, shape)
        else:
            out = np.zeros(shape, dtype=array.dtype)
        rest = (slice(None),) * (array.ndim - 1)
        for start in range(0, len(rows), SPILL_CHUNK):
            part = np.arange(start, min(start + SPILL_CHUNK, len(rows)))
            part = part[ok[part]]
            if len(part):
                out[part] = array.get_orthogonal_selection((rows[part],) + rest)
        return out

    position = {int(r): i for i, r in enumerate(rows)}
    q_done = queries.row_states()["done"][q_rows] if len(q_rows) else np.zeros(0, bool)
    if require_queries and not q_done.all():
        raise FeatureError(
            f"{int((~q_done).sum())} {split} queries have no embedding; run `tcd encode`"
        )
    q_rows = q_rows[q_done]
    if has_queries and "query" in set(queries.group.array_keys()):
        query_array = queries.group["query"]
        no_queries = np.zeros((0, query_array.shape[1]), np.float16)
    else:
        no_queries = np.zeros((0, ocr_text.group["captions"].shape[-1]), np.float16)
    return Features(
        video_ids=[str(v) for v in videos["id"][rows]],
        frames=take(frames, "frames"),
        captions=take(ocr_text, "captions"),
        caption_mask=take(ocr_text, "mask"),
        instances=take(ocr_text, "instances"),
        instance_mask=take(ocr_text, "instance_mask"),
        queries=query_array.get_orthogonal_selection((q_rows, slice(None)))
        if len(q_rows)
        else no_queries,
        query_video=np.array(
            [position[int(captions["video_row"][r])] for r in q_rows], dtype=np.int64
        ),
        query_text=[str(t) for t in captions["text"][q_rows]],
        missing=[str(v) for v in videos["id"][rows[~ok]]],
        rows=rows,
        query_ids=[str(i) for i in captions["id"][q_rows]],
        shared_space=shared_space,
        source={group.stage: group.key for group in (frames, ocr_text, queries)},
        data_key=selected.data_key(),
    )
