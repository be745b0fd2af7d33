"""`tcd search`: rank a split's videos for a free-text query (FAISS top-K over the run's
current index, then the full head) and return typed hits.

What needs `pipeline` comes in as callables: the query encoder (texts -> embeddings) and the
split's window captions (`RunSplit.windows`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from heads.data import Features
from heads.scoring import head_device
from retrieval.index import RetrievalError, two_stage
from retrieval.run_split import RunSplit

LOG = logging.getLogger(__name__)
QueryEncoder = Callable[[list[str]], np.ndarray]  # texts -> (n, Dt) text embeddings


@dataclass
class SearchHit:
    """One ranked video: its scores and the window caption closest to the query."""

    rank: int
    video: str
    path: str
    score: float
    branches: dict[str, float]  # branch name -> score (tv, to, th for TCD)
    caption: str = ""  # "" when the video shows no scene text
    start: float | None = None  # the caption's window, seconds (None when unknown)
    end: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain fields, branches flattened to S_<name>."""
        plain = asdict(self)
        branches = plain.pop("branches")
        return {**plain, **{f"S_{name}": value for name, value in branches.items()}}


def check_query(text: str) -> str:
    """The query without surrounding blanks; an empty one is refused."""
    if not text.strip():
        raise RetrievalError("the query is empty; give the words to search for, e.g. 'a bakery'")
    return text.strip()


@torch.no_grad()
def branch_scores(
    head: nn.Module, query: np.ndarray, features: Features, videos: np.ndarray
) -> dict[str, np.ndarray]:
    """Each branch's score of one query (1, Dt) against some videos."""
    device = head_device(head)
    query_t = torch.from_numpy(np.asarray(query)).float().to(device)
    out = head(query=query_t, **features.video_batch(videos, device)).branches
    return {name: value[0].float().cpu().numpy() for name, value in out.items()}


def closest_windows(features: Features, videos: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Per video, the window whose caption embedding is closest to the query; -1 for none."""
    captions = features.captions[videos].astype(np.float32)
    mask = features.caption_mask[videos]
    sim = np.einsum("ntd,d->nt", captions, np.asarray(query, np.float32)[0])
    sim[~mask] = -np.inf
    return np.where(mask.any(axis=1), np.argmax(sim, axis=1), -1)


def search(
    split: RunSplit,
    text: str,
    encode: QueryEncoder,
    *,
    top_k: int = 10,
    k: int = 100,
    log: Callable[[str], None] = LOG.warning,
) -> list[SearchHit]:
    """The `top_k` best videos of `split` for `text`, from `k` FAISS candidates."""
    text = check_query(text)
    query = np.asarray(encode([text]), dtype=np.float16)
    one = replace(
        split.features, queries=query, query_video=np.zeros(1, np.int64), query_text=[text]
    )
    result = two_stage(split.head, one, split.current_index(log), k)
    found = result.candidates[0][result.candidates[0] >= 0]  # -1: no result
    order = found[np.argsort(-result.scores[0, found], kind="stable")][:top_k]
    if not len(order):
        return []
    branches = branch_scores(split.head, query, split.features, order)
    shown = split.windows(np.asarray(split.features.rows)[order])
    best = closest_windows(split.features, order, query)

    def span(times: np.ndarray | None, i: int) -> float | None:
        return float(times[i, best[i]]) if times is not None and best[i] >= 0 else None

    return [
        SearchHit(
            rank=i + 1,
            video=split.features.video_ids[video],
            path=split.paths[video],
            score=float(result.scores[0, video]),
            branches={name: float(values[i]) for name, values in branches.items()},
            caption=str(shown.texts[i, best[i]]) if best[i] >= 0 else "",
            start=span(shown.starts, i),
            end=span(shown.ends, i),
        )
        for i, video in enumerate(order)
    ]


def format_hits(text: str, hits: list[SearchHit]) -> str:
    """The hits as the terminal shows them."""
    lines = [f"query: {text}"]
    for hit in hits:
        branch = "  ".join(f"S_{name} {value:+.3f}" for name, value in hit.branches.items())
        lines.append(f"{hit.rank:>3}. {hit.score:+.3f}  {branch}  {hit.video}")
        lines.append(f"      {hit.path}")
        if hit.caption:
            when = f" ({hit.start:.1f}-{hit.end:.1f} s)" if hit.start is not None else ""
            lines.append(f"      caption{when}: {hit.caption}")
    if not hits:
        lines.append("no video found")
    return "\n".join(lines)
