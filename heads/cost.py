"""What a head costs: parameters, OCR texts it reads per video (`ProjectedHead.ocr_texts`),
matmul FLOPs per video and per pair, and measured time per 1k scored pairs.

TCD's text-condition makes part of the video side depend on the query, so its cost splits
into a per-video part (projections, co-attention) and a per-(query, video) part. FLOPs are
counted by `torch.utils.flop_counter` (matrix products only; element-wise work is not
counted) on one forward pass of q queries x n videos for q, n in {1, 2}:
F(q, n) = n*video + q*query + q*n*pair, so pair = F(2,2) - F(2,1) - F(1,2) + F(1,1).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from heads.data import Features
from heads.modules import ProjectedHead
from heads.scoring import score_matrix


def head_cost(head: ProjectedHead, features: Features) -> dict[str, float]:
    """Everything the cost table shows of a head on `features` but training time: parameters,
    OCR texts read per video, MFLOPs per video and per pair, ms per 1k scored pairs."""
    return {
        "params": sum(p.numel() for p in head.parameters()),
        "ocr_texts": head.ocr_texts(features),
        **flops(head, features),
        "ms_per_1k_pairs": ms_per_1k_pairs(head, features),
    }


def flops(head: nn.Module, features: Features) -> dict[str, float]:
    """Matmul MFLOPs per video (query independent) and per (query, video) pair."""
    head = head.cpu().eval()  # (grad mode stays on: the counter's module hooks need it)
    with_text = features.caption_mask.any(1).nonzero()[0]
    videos = list(with_text[:2]) if len(with_text) >= 2 else [0, min(1, features.n_videos - 1)]

    def count(q: int, n: int) -> int:
        counter = FlopCounterMode(display=False)
        query = torch.from_numpy(features.queries[:q]).float()
        with counter:
            head(query=query, **features.video_batch(videos[:n]))
        return counter.get_total_flops()

    f11, f12, f21, f22 = count(1, 1), count(1, 2), count(2, 1), count(2, 2)
    pair = f22 - f21 - f12 + f11
    return {"video_mflops": (f12 - f11 - pair) / 1e6, "pair_mflops": pair / 1e6}


def ms_per_1k_pairs(
    head: nn.Module, features: Features, size: int = 256, repeats: int = 5
) -> float:
    """Median wall time of exact scoring, per 1,000 (query, video) pairs, over `repeats` passes
    of at most `size` queries x `size` videos (per-video work included, amortised over the
    queries, as in a full matrix)."""
    videos = np.arange(min(size, features.n_videos))
    block = features.subset(videos)
    block.queries, block.query_video = block.queries[:size], block.query_video[:size]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sim = score_matrix(head, block)
        times.append(time.perf_counter() - started)
    return 1e6 * float(np.median(times)) / max(1, sim.size)
