"""Retrieval metrics from a similarity matrix (rows = queries/captions, columns = videos).

One module, below both `heads` (the trainer's validation) and `retrieval` (eval, reports):
numpy only, so everything that ranks uses the same tie rule.

Ranks are 1-based with ties averaged: a true item tied with k others gets the mean of the
k + 1 ranks they share, so a constant matrix scores no better than chance (fp16 caches make
ties common; ranking by sort position would favour whichever index comes first).
"""

from __future__ import annotations

import numpy as np

from cache.errors import TcdError

METRICS = ("R@1", "R@5", "R@10", "MdR", "MnR")  # the columns of every metrics table


class MetricsError(TcdError):
    """A similarity matrix cannot be ranked (non-finite scores, no queries)."""


def check_finite(sim: np.ndarray, what: str = "similarity matrix") -> None:
    """Refuse NaN or infinite scores, naming how many rows and columns hold them: a NaN
    compares false with everything, so it would otherwise rank as a tie or a hit."""
    bad = ~np.isfinite(np.asarray(sim))  # (no float64 copy of a large matrix)
    if bad.any():
        rows, cols = int(bad.any(axis=1).sum()), int(bad.any(axis=0).sum())
        raise MetricsError(
            f"{what} holds {int(bad.sum())} non-finite score(s) in {rows} row(s) and {cols} "
            f"column(s) of {sim.shape[0]} x {sim.shape[1]}; the head or the features produced "
            "NaN/inf (check the run's training curves and the cached features)"
        )


def tie_averaged_ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Rank of column `truth[i]` within row i of `scores` (1 = best), ties averaged."""
    scores = np.asarray(scores, dtype=np.float64)
    check_finite(scores)
    target = scores[np.arange(len(truth)), truth][:, None]
    greater = (scores > target).sum(axis=1)
    equal = (scores == target).sum(axis=1)  # includes the target itself
    return greater + (equal + 1) / 2


def summarise(ranks: np.ndarray) -> dict[str, float]:
    """R@1, R@5, R@10 (percent), median and mean rank."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise MetricsError("no queries to rank: the split has no captions with videos")
    return {  # in the order of METRICS
        "R@1": float(100 * (ranks <= 1).mean()),
        "R@5": float(100 * (ranks <= 5).mean()),
        "R@10": float(100 * (ranks <= 10).mean()),
        "MdR": float(np.median(ranks)),
        "MnR": float(ranks.mean()),
    }


def t2v_metrics(sim: np.ndarray, query_video: np.ndarray) -> dict[str, float]:
    """Text-to-video: each caption ranks all videos; its own video is the target."""
    return summarise(tie_averaged_ranks(sim, np.asarray(query_video)))


def recall_at_1(sim: np.ndarray, query_video: np.ndarray) -> float:
    """t2v R@1 in percent, by the same tie rule (a tie for first is not a hit)."""
    return t2v_metrics(sim, query_video)["R@1"]


def v2t_metrics(sim: np.ndarray, query_video: np.ndarray) -> dict[str, float]:
    """Video-to-text: each video ranks all captions; its best-scored own caption counts, ranked
    among the other videos' captions only (its own other captions are no misses, even tied
    with it: duplicate captions of one video score alike), ties averaged."""
    sim = np.asarray(sim, dtype=np.float64)
    check_finite(sim)
    query_video = np.asarray(query_video)
    by_video = sim.T  # (videos, captions)
    ranks = []
    for video in np.unique(query_video):
        own = query_video == video
        row = by_video[video]
        best, others = row[own].max(), row[~own]
        ranks.append((others > best).sum() + ((others == best).sum() + 2) / 2)
    return summarise(np.array(ranks))


def pair_accuracy(sim: np.ndarray, query_video: np.ndarray, other_video: np.ndarray) -> float:
    """Percent of queries whose own video scores above `other_video[i]` (a hard negative
    such as a twin); a tie counts half, so a constant matrix scores 50."""
    rows = np.arange(len(query_video))
    if rows.size == 0:
        raise MetricsError("no query pairs to compare")
    sim = np.asarray(sim)
    own = np.asarray(sim[rows, np.asarray(query_video)], dtype=np.float64)
    other = np.asarray(sim[rows, np.asarray(other_video)], dtype=np.float64)
    check_finite(np.stack([own, other]), "the scores of the pairs")
    return float(100 * ((own > other) + 0.5 * (own == other)).mean())
