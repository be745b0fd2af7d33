"""Retrieval metrics from a similarity matrix (rows = queries/captions, columns = videos).

Ranks are 1-based with ties averaged: a true item tied with k others gets the mean of the
k + 1 ranks they share, so a constant matrix scores no better than chance (fp16 caches make
ties common; ranking by sort position would favour whichever index comes first).
"""

from __future__ import annotations

import numpy as np


def tie_averaged_ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Rank of column `truth[i]` within row i of `scores` (1 = best), ties averaged."""
    scores = np.asarray(scores, dtype=np.float64)
    target = scores[np.arange(len(truth)), truth][:, None]
    greater = (scores > target).sum(axis=1)
    equal = (scores == target).sum(axis=1)  # includes the target itself
    return greater + (equal + 1) / 2


def summarise(ranks: np.ndarray) -> dict[str, float]:
    """R@1, R@5, R@10 (percent), median and mean rank."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to summarise")
    return {
        "R@1": float(100 * (ranks <= 1).mean()),
        "R@5": float(100 * (ranks <= 5).mean()),
        "R@10": float(100 * (ranks <= 10).mean()),
        "MdR": float(np.median(ranks)),
        "MnR": float(ranks.mean()),
    }


def t2v_metrics(sim: np.ndarray, query_video: np.ndarray) -> dict[str, float]:
    """Text-to-video: each caption ranks all videos; its own video is the target."""
    return summarise(tie_averaged_ranks(sim, np.asarray(query_video)))


def v2t_metrics(sim: np.ndarray, query_video: np.ndarray) -> dict[str, float]:
    """Video-to-text: each video ranks all captions; its best-ranked own caption counts."""
    sim = np.asarray(sim, dtype=np.float64)
    query_video = np.asarray(query_video)
    by_video = sim.T  # (videos, captions)
    ranks = []
    for video in np.unique(query_video):
        own = np.flatnonzero(query_video == video)
        row = by_video[video]
        ranks.append(min(tie_averaged_ranks(np.tile(row, (len(own), 1)), own)))
    return summarise(np.array(ranks))
