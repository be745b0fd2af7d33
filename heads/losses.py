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


SCALES = np.geomspace(1.0, 300.0, 25)  # the scale grid of `retrieval_loss`


def retrieval_loss(sim: np.ndarray, query_video: np.ndarray) -> float:
    """Mean t2v cross-entropy of `scale * sim` against each query's true video, at the scale
    of `SCALES` where it is lowest: a ranking quality that does not saturate like R@1 and,
    unlike a fixed scale, does not reward scores merely for being spread wider (so epochs,
    and fusion weights, compare fairly)."""
    logits = torch.from_numpy(np.asarray(sim)).double()
    target = torch.from_numpy(np.asarray(query_video))
    return min(float(F.cross_entropy(logits * scale, target)) for scale in SCALES)


def hsc_loss(
    v: torch.Tensor,
    o: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 0.1,
    form: str = "cycle",
) -> torch.Tensor:
    """Heterogeneous Semantics Calibrating: cycle-consistency through soft nearest semantics.

    From frame i: soft nearest caption o~ = sum_j softmax_j(cos(v_i, o_j)/s) o_j, then back to
    frames beta = softmax_k(cos(o~, v_k)/s) (cosine, as DESIGN says), predicted index
    mu_i = sum_k k beta_k, loss (i - mu_i)^2 / T^2; symmetric from captions. Empty captions are
    masked out. This cycle returns home under any reordering of the captions, so it cannot by
    itself tie frame i to caption i; `form="cycle+index"` adds the same squared error between
    i and the soft-nearest caption's index nu_i = sum_j j softmax_j(cos(v_i, o_j)/s) (and from
    captions to frames), averaged with the cycle.
    v, o: (N, T, D); mask (N, T) True where the caption has text. Returns a scalar.

    Computed in float32 with autocast off, whatever the caller's: under a GPU's bf16
    autocast the cosines would be bf16, too coarse for 1/T^2 index errors, and a bf16 tensor
    cannot hold the float32 minimum that masks an empty caption (training stopped there).
    """
    with torch.autocast(v.device.type, enabled=False):
        return _hsc_loss(v.float(), o.float(), mask, temperature, form)


def _hsc_loss(
    v: torch.Tensor, o: torch.Tensor, mask: torch.Tensor, temperature: float, form: str
) -> torch.Tensor:
    n, t, _ = v.shape
    v = F.normalize(v, dim=-1)
    o = F.normalize(o, dim=-1)
    index = torch.arange(t, device=v.device, dtype=v.dtype)
    neg = torch.finfo(v.dtype).min

    def soft_nearest(a, b, b_valid):
        logits = torch.einsum("nid,njd->nij", a, b) / temperature
        return torch.softmax(logits.masked_fill(~b_valid[:, None, :], neg), dim=-1)

    def cycle(a, b, a_valid, b_valid):
        to_b = soft_nearest(a, b, b_valid)
        nearest = F.normalize(to_b @ b, dim=-1)  # (N, T, D)
        mu = soft_nearest(nearest, a, a_valid) @ index  # (N, T)
        errors = [(index - mu) ** 2 / t**2]
        if form == "cycle+index":
            errors.append((index - to_b @ index) ** 2 / t**2)
        err = sum(errors) / len(errors)
        valid = a_valid & b_valid.any(dim=1, keepdim=True)
        return (err * valid).sum(), valid.sum()

    all_frames = torch.ones_like(mask)
    e1, c1 = cycle(v, o, all_frames, mask)
    e2, c2 = cycle(o, v, mask, all_frames)
    return (e1 + e2) / (c1 + c2).clamp(min=1)


def hsc_uniform(mask: torch.Tensor, dim: int = 1, form: str = "cycle") -> float:
    """HSC's value for a uniform guess (every softmax flat): what an inert calibration scores.
    Computed by the loss itself on zero features (cosines 0), so masking is the same."""
    n, t = mask.shape
    zeros = torch.zeros(n, t, dim)
    return float(hsc_loss(zeros, zeros, mask.cpu(), form=form))


def shot_ids(frames: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Shots of each video from its frame features (N, T, D) -> (N, T) ints: a new shot starts
    where the cosine of consecutive frames falls below `threshold` (a hard cut)."""
    x = np.asarray(frames, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    cuts = (x[:, 1:] * x[:, :-1]).sum(-1) < threshold
    return np.concatenate([np.zeros((len(x), 1), int), np.cumsum(cuts, axis=1)], axis=1)


def calibration_accuracy(
    v: torch.Tensor, o: torch.Tensor, mask: torch.Tensor, shots: np.ndarray
) -> tuple[float, float, int]:
    """Share of frames whose nearest non-empty caption (cosine) lies in the frame's own shot
    (windows inside one shot are interchangeable), over videos with >= 2 shots and text; the
    share a random non-empty caption would reach; and how many frames were counted."""
    shots_t = torch.from_numpy(shots).to(v.device)
    multi = (shots_t.max(dim=1).values > 0) & mask.any(dim=1)
    if not multi.any():
        return float("nan"), float("nan"), 0
    v, o, mask, shots_t = v[multi], o[multi], mask[multi], shots_t[multi]
    sim = torch.einsum("nid,njd->nij", F.normalize(v, dim=-1), F.normalize(o, dim=-1))
    nearest = sim.masked_fill(~mask[:, None, :], -2.0).argmax(dim=-1)  # (N, T)
    hit = shots_t.gather(1, nearest) == shots_t
    same = (shots_t[:, :, None] == shots_t[:, None, :]) & mask[:, None, :]
    chance = same.sum(-1) / mask.sum(-1, keepdim=True)
    return float(hit.float().mean()), float(chance.float().mean()), int(hit.numel())
