"""Scoring a head: the full (queries x videos) matrix in memory-bounded blocks."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cache.device import default_device
from heads.data import Features


def head_device(head: nn.Module) -> torch.device:
    return next(head.parameters()).device


def score_matrix(
    head: nn.Module,
    features: Features,
    memory_budget: float = 2e9,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Full scores (queries x videos), computed in square blocks of queries x videos sized so
    the per-pair tensors (about 8 of Q x N x T x D floats) stay within `memory_budget` bytes.
    Each video block is encoded once (`head.encode`) and scored against every query block.
    Runs on the GPU when present."""
    return _score(head, features, memory_budget, device)["total"]


def score_branches(
    head: nn.Module,
    features: Features,
    memory_budget: float = 2e9,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Each branch's full score matrix, by branch name (as `score_matrix` computes them)."""
    out = _score(head, features, memory_budget, device, branches=True)
    return {name: out[name] for name in head.branches}


@torch.no_grad()
def _score(head, features, memory_budget, device, branches: bool = False):
    device = torch.device(device) if device is not None else default_device()
    head = head.to(device).eval()
    t, d = features.captions.shape[1], max(features.captions.shape[-1], features.frames.shape[-1])
    block = max(1, int(math.sqrt(memory_budget / (8 * 4 * t * d))))
    queries = torch.from_numpy(features.queries).float().to(device)
    names = ["total", *(head.branches if branches else ())]
    out = {name: np.zeros((len(queries), features.n_videos), np.float32) for name in names}
    for start in range(0, features.n_videos, block):
        index = slice(start, min(start + block, features.n_videos))
        videos = head.encode(**features.video_batch(index, device))  # once per video
        for q0 in range(0, len(queries), block):
            scores = head.score(queries[q0 : q0 + block], videos)
            for name in names:
                value = scores.total if name == "total" else scores.branches[name]
                out[name][q0 : q0 + block, index] = value.float().cpu().numpy()
    return out
