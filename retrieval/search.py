"""`tcd search` and `tcd serve`: rank a split's videos for free-text queries (FAISS top-K
over the run's current index, then the full head over video encodings held in memory) and
return typed hits. Videos whose features are missing (a failed stage) are never returned.

What needs `pipeline` comes in as callables: the query encoder (texts -> embeddings) and the
split's window captions (`RunSplit.windows`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from heads.data import Features
from heads.scoring import head_device
from retrieval.index import BLOCK, RetrievalError, VideoIndex, query_embeddings
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


@dataclass
class Searcher:
    """A split ready for many queries: its current index and every video encoded by the head
    once, held in memory (`tcd search` opens one per process, `tcd serve` one per split).
    Videos without features (their stages failed or never ran) are never returned."""

    split: RunSplit
    index: VideoIndex
    encoded: dict[str, torch.Tensor]  # head.encode of every video of the split
    searchable: np.ndarray  # (N,) bool: the video has features

    @classmethod
    @torch.no_grad()
    def open(cls, split: RunSplit, log: Callable[[str], None] = LOG.warning) -> Searcher:
        """Load (or rebuild, when stale) the split's index and encode its videos."""
        index = split.current_index(log)
        head, features = split.head, split.features
        head.eval()
        device = head_device(head)
        parts = [  # the blocks two_stage encodes, so scores match it to the bit
            head.encode(**features.video_batch(slice(s, s + BLOCK), device))
            for s in range(0, features.n_videos, BLOCK)
        ]
        encoded = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        missing = set(features.missing)
        searchable = np.array([v not in missing for v in features.video_ids], dtype=bool)
        if missing:
            log(
                f"{len(missing)} video(s) of {features.n_videos} in split {split.split!r} have "
                "no features (a stage failed or has not run for them): search cannot return "
                "them; `tcd cache status` counts them, `tcd extract` computes those pending"
            )
        return cls(split, index, encoded, searchable)

    @torch.no_grad()
    def search(
        self,
        text: str,
        encode: QueryEncoder,
        *,
        top_k: int = 10,
        k: int = 100,
        min_score: float | None = None,
    ) -> list[SearchHit]:
        """The `top_k` best videos for `text` among `k` FAISS candidates (at least `top_k`;
        videos with features only), reranked by the full head; hits under `min_score` are
        dropped."""
        text = check_query(text)
        k = max(k, top_k)  # (fewer candidates than hits asked for cut the hits to `k`)
        if min_score is not None and not np.isfinite(min_score):
            raise RetrievalError(f"min_score must be a finite number, got {min_score}")
        split, head = self.split, self.split.head
        query = np.asarray(encode([text]), dtype=np.float16)
        n_missing = int((~self.searchable).sum())
        wanted = min(k + n_missing, split.features.n_videos)
        _, labels = self.index.search(query_embeddings(head, query), wanted)
        found = labels[0][labels[0] >= 0]  # -1: FAISS found fewer than asked
        found = found[self.searchable[found]][:k]
        if not len(found):
            return []
        rows = torch.from_numpy(found).to(head_device(head))
        picked = {name: value[rows] for name, value in self.encoded.items()}
        query_t = torch.from_numpy(query).float().to(head_device(head))
        scores = head.score(query_t, picked).total[0].float().cpu().numpy()
        ranked = np.argsort(-scores, kind="stable")[:top_k]
        if min_score is not None:
            ranked = ranked[scores[ranked] >= min_score]
        return self._hits(query, found[ranked], scores[ranked]) if len(ranked) else []

    def _hits(self, query: np.ndarray, order: np.ndarray, scores: np.ndarray) -> list[SearchHit]:
        split = self.split
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
                score=float(scores[i]),
                branches={name: float(values[i]) for name, values in branches.items()},
                caption=str(shown.texts[i, best[i]]) if best[i] >= 0 else "",
                start=span(shown.starts, i),
                end=span(shown.ends, i),
            )
            for i, video in enumerate(order)
        ]


def search(
    split: RunSplit,
    text: str,
    encode: QueryEncoder,
    *,
    top_k: int = 10,
    k: int = 100,
    min_score: float | None = None,
    log: Callable[[str], None] = LOG.warning,
) -> list[SearchHit]:
    """The `top_k` best videos of `split` for `text`, from `k` FAISS candidates (one query;
    many queries share one `Searcher`)."""
    text = check_query(text)  # an empty query opens nothing
    return Searcher.open(split, log).search(text, encode, top_k=top_k, k=k, min_score=min_score)


def read_queries(path: Path) -> list[str]:
    """Queries from a file: a JSON list of strings (`.json`), else one query a line (blank
    lines skipped). Each is checked like a single query."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no text
    except FileNotFoundError:
        raise RetrievalError(f"{path}: queries file not found") from None
    except UnicodeDecodeError:
        raise RetrievalError(f"{path}: not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RetrievalError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
        if not isinstance(items, list) or not all(isinstance(q, str) for q in items):
            raise RetrievalError(f"{path}: expected a JSON list of query strings")
    else:
        # one query a line, ended by "\n" alone (not by U+2028 and the like inside a query)
        items = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not items:
        raise RetrievalError(f"{path}: no queries in the file")
    return [check_query(q) for q in items]


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
