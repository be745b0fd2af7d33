"""The trainer's losses: symmetric InfoNCE over a batch, and HSC (DESIGN section 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from heads.modules import Scores


def info_nce(scores: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a (B, B) score matrix whose diagonal holds the true pairs."""
    logits = scores * scale
    labels = torch.arange(len(scores), device=scores.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def contrastive_loss(scores: Scores, scale: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """InfoNCE on the final scores plus InfoNCE on each branch's scores; the sum and each
    part's value (`nce`, `nce_<branch>`)."""
    loss = info_nce(scores.total, scale)
    parts = {"nce": loss.item()}
    for name, branch in scores.branches.items():
        branch_loss = info_nce(branch, scale)
        loss = loss + branch_loss
        parts[f"nce_{name}"] = branch_loss.item()
    return loss, parts


def retrieval_loss(sim: np.ndarray, query_video: np.ndarray, scale: float) -> float:
    """Mean t2v cross-entropy of `scale * sim` against each query's true video."""
    logits = torch.from_numpy(sim).double() * scale
    return float(F.cross_entropy(logits, torch.from_numpy(query_video)))


def hsc_loss(
    v: torch.Tensor, o: torch.Tensor, mask: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Heterogeneous Semantics Calibrating: cycle-consistency through soft nearest semantics.

    From frame i: soft nearest caption o~ = sum_j softmax_j(cos(v_i, o_j)/s) o_j, then back to
    frames beta = softmax_k(cos(o~, v_k)/s), predicted index mu_i = sum_k k beta_k,
    loss (i - mu_i)^2 / T^2; symmetric from captions. Empty captions are masked out.
    v, o: (N, T, D); mask (N, T) True where the caption has text. Returns a scalar.
    """
    n, t, _ = v.shape
    v = F.normalize(v, dim=-1)
    o = F.normalize(o, dim=-1)
    index = torch.arange(t, device=v.device, dtype=v.dtype)
    neg = torch.finfo(v.dtype).min

    def cycle(a, b, a_valid, b_valid):
        to_b = torch.einsum("nid,njd->nij", a, b) / temperature
        to_b = to_b.masked_fill(~b_valid[:, None, :], neg)
        nearest = torch.softmax(to_b, dim=-1) @ b  # (N, T, D)
        back = torch.einsum("nid,nkd->nik", nearest, a) / temperature
        back = back.masked_fill(~a_valid[:, None, :], neg)
        mu = torch.softmax(back, dim=-1) @ index  # (N, T)
        err = (index - mu) ** 2 / t**2
        valid = a_valid & b_valid.any(dim=1, keepdim=True)
        return (err * valid).sum(), valid.sum()

    all_frames = torch.ones_like(mask)
    e1, c1 = cycle(v, o, all_frames, mask)
    e2, c2 = cycle(o, v, mask, all_frames)
    return (e1 + e2) / (c1 + c2).clamp(min=1)
