"""The TCD head and its baselines as torch modules (DESIGN section 5).

All heads score a batch of queries against a batch of videos and return per-pair scores
`(Q, N)` plus, for TCD, the three branch scores. Inputs are cached, L2-normalised features:

    query      (Q, Dt)      sentence embedding of each query
    frames     (N, T, Dv)   frame embeddings
    captions   (N, T, Dt)   window-caption embeddings, `caption_mask (N, T)` True = has text
    instances  (N, I, Dt)   OCR word embeddings (ocr-instances baseline), `instance_mask (N, I)`

Our choices where the paper is silent (also in README):
- co-attention runs per video before text-condition (query independent, so its cost is per
  video, not per pair); text-condition then re-weights its outputs per (query, video);
- CTCD keys get one learned always-valid null token, so a video without any scene text
  still has a defined clue;
- each branch has a linear projection on the query side and on the video side, identity-
  initialised when widths match, so training starts from the encoders' zero-shot ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BRANCHES = ("tv", "to", "th")


def projection(d_in: int, d_out: int) -> nn.Linear:
    """A linear map, identity-initialised when the widths match."""
    layer = nn.Linear(d_in, d_out)
    if d_in == d_out:
        with torch.no_grad():
            layer.weight.copy_(torch.eye(d_out))
            layer.bias.zero_()
    return layer


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean over `dim` of positions where `mask` is True (zeros when none is)."""
    if mask is None:
        return x.mean(dim)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim) / weights.sum(dim).clamp(min=1.0)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of (Q, D) queries with (Q, N, D) or (N, D) videos -> (Q, N)."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    if b.dim() == 2:
        return a @ b.T
    return torch.einsum("qd,qnd->qn", a, b)


@dataclass
class Scores:
    """Final scores (Q, N) and, where the head has branches, each branch's scores."""

    total: torch.Tensor
    branches: dict[str, torch.Tensor]


@dataclass(frozen=True)
class HeadSettings:
    kind: str = "tcd"  # tcd | video-only | ocr-instances
    width: int = 0  # common width; 0 = the text encoder's width
    heads: int = 4  # attention heads
    text_condition: str = "softmax-reweight"  # none | softmax-reweight
    tau: float = 5.0
    coattn: bool = True
    ctcd: bool = True
    branches: tuple[str, ...] = BRANCHES
    dropout: float = 0.1


class ProjectedHead(nn.Module):
    """Input projections every head shares: frames and texts to a common width."""

    def __init__(self, settings: HeadSettings, frame_dim: int, text_dim: int):
        super().__init__()
        self.settings = settings
        self.width = settings.width or text_dim
        self.frame_in = projection(frame_dim, self.width)
        self.text_in = projection(text_dim, self.width)  # shared by queries and captions


class CoAttention(nn.Module):
    """One cross-attention block each way (frames read captions, captions read frames)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.v_from_o = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.o_from_v = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_v = nn.LayerNorm(width)
        self.norm_o = nn.LayerNorm(width)

    def forward(
        self, v: torch.Tensor, o: torch.Tensor, o_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        empty = ~o_mask.any(dim=1)  # a video without text: frames keep their own features
        pad = ~o_mask.clone()
        pad[empty] = False  # avoid all-masked rows (NaN); their result is discarded below
        v_att, _ = self.v_from_o(v, o, o, key_padding_mask=pad, need_weights=False)
        v_att = torch.where(empty[:, None, None], torch.zeros_like(v_att), v_att)
        o_att, _ = self.o_from_v(o, v, v, need_weights=False)
        return self.norm_v(v + v_att), self.norm_o(o + o_att)


class ClueDistiller(nn.Module):
    """CTCD: one learnable clue per modality reads the other modality by cross-attention."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.clue_v = nn.Parameter(torch.zeros(1, 1, width))
        self.clue_o = nn.Parameter(torch.zeros(1, 1, width))
        self.type_ctx = nn.Parameter(torch.zeros(1, 1, width))
        self.type_v = nn.Parameter(torch.zeros(1, 1, width))
        self.type_o = nn.Parameter(torch.zeros(1, 1, width))
        self.null = nn.Parameter(torch.zeros(1, 1, width))
        for p in (self.clue_v, self.clue_o, self.type_ctx, self.type_v, self.type_o, self.null):
            nn.init.normal_(p, std=0.02)
        self.read_o = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.read_v = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_v = nn.LayerNorm(width)
        self.norm_o = nn.LayerNorm(width)

    def forward(self, v: torch.Tensor, o: torch.Tensor, o_mask: torch.Tensor) -> torch.Tensor:
        """v, o: (B, T, D) (already text-conditioned), o_mask (B, T) -> hybrid clue (B, D)."""
        b = v.shape[0]
        null = (self.null + self.type_o).expand(b, 1, -1)
        keys_o = torch.cat([null, o + self.type_o], dim=1)
        pad_o = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=o.device), ~o_mask], dim=1)
        keys_v = torch.cat([(self.null + self.type_v).expand(b, 1, -1), v + self.type_v], dim=1)
        c_v = (self.clue_v + self.type_ctx).expand(b, 1, -1)
        c_o = (self.clue_o + self.type_ctx).expand(b, 1, -1)
        c_v = self.norm_v(
            c_v + self.read_o(c_v, keys_o, keys_o, key_padding_mask=pad_o, need_weights=False)[0]
        )
        c_o = self.norm_o(c_o + self.read_v(c_o, keys_v, keys_v, need_weights=False)[0])
        return ((c_v + c_o) / 2).squeeze(1)


class TCDHead(ProjectedHead):
    """Text-condition + co-attention + CTCD, three matchings (tv, to, th), mean score."""

    def __init__(self, settings: HeadSettings, frame_dim: int, text_dim: int):
        super().__init__(settings, frame_dim, text_dim)
        width = self.width
        self.coattn = (
            CoAttention(width, settings.heads, settings.dropout) if settings.coattn else None
        )
        self.ctcd = (
            ClueDistiller(width, settings.heads, settings.dropout) if settings.ctcd else None
        )
        branches = [b for b in settings.branches if b != "th" or settings.ctcd]
        if not branches:
            raise ValueError("the TCD head needs at least one branch (tv, to, th; th needs ctcd)")
        self.branches = tuple(branches)
        # ModuleDict keys cannot be "to" (nn.Module.to), hence the "s_" prefix
        self.query_proj = nn.ModuleDict({f"s_{b}": projection(width, width) for b in self.branches})
        self.video_proj = nn.ModuleDict({f"s_{b}": projection(width, width) for b in self.branches})

    def encode_videos(self, frames, captions, caption_mask):
        """Query-independent part: projections and co-attention -> (V, O) each (N, T, D)."""
        v = self.frame_in(frames)
        o = self.text_in(captions)
        if self.coattn is not None:
            v, o = self.coattn(v, o, caption_mask)
        return v, o

    def condition(
        self, q: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(tau * cos(t, x_i)) re-weighting: (Q, D), (N, T, D) -> (Q, N, T, D)."""
        t = x.shape[1]
        if self.settings.text_condition == "none":
            return x.unsqueeze(0).expand(q.shape[0], -1, -1, -1)
        logits = self.settings.tau * torch.einsum(
            "qd,ntd->qnt", F.normalize(q, dim=-1), F.normalize(x, dim=-1)
        )
        if mask is not None:
            logits = logits.masked_fill(~mask.unsqueeze(0), float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all-masked rows -> zeros
        return t * weights.unsqueeze(-1) * x.unsqueeze(0)

    def forward(self, query, frames, captions, caption_mask, **_: object) -> Scores:
        q = self.text_in(query)
        v, o = self.encode_videos(frames, captions, caption_mask)
        v_t = self.condition(q, v, None)
        o_t = self.condition(q, o, caption_mask)
        nq, n, t, d = v_t.shape
        pooled = {
            "tv": masked_mean(v_t, None, dim=2),
            "to": masked_mean(o_t, caption_mask.unsqueeze(0).expand(nq, -1, -1), dim=2),
        }
        if "th" in self.branches:
            mask = caption_mask.unsqueeze(0).expand(nq, -1, -1).reshape(nq * n, t)
            clue = self.ctcd(v_t.reshape(nq * n, t, d), o_t.reshape(nq * n, t, d), mask)
            pooled["th"] = clue.view(nq, n, d)
        branches = {
            b: cosine(self.query_proj[f"s_{b}"](q), self.video_proj[f"s_{b}"](pooled[b]))
            for b in self.branches
        }
        if (
            "to" in branches
        ):  # a video without scene text has no OCR evidence, not negative evidence
            branches["to"] = branches["to"] * caption_mask.any(dim=1).to(q.dtype).unsqueeze(0)
        return Scores(torch.stack(list(branches.values())).mean(0), branches)

    def video_embeddings(self, frames, captions, caption_mask, **_: object) -> torch.Tensor:
        """Text-condition off: one vector per video, (N, len(branches) * D), for FAISS.

        Its inner product with `query_embeddings` equals the query-independent score S.
        """
        v, o = self.encode_videos(frames, captions, caption_mask)
        pooled = {"tv": v.mean(1), "to": masked_mean(o, caption_mask, dim=1)}
        if "th" in self.branches:
            pooled["th"] = self.ctcd(v, o, caption_mask)
        parts = [F.normalize(self.video_proj[f"s_{b}"](pooled[b]), dim=-1) for b in self.branches]
        if "to" in self.branches:
            i = self.branches.index("to")
            parts[i] = parts[i] * caption_mask.any(dim=1, keepdim=True).to(parts[i].dtype)
        return torch.cat(parts, dim=-1)

    def query_embeddings(self, query) -> torch.Tensor:
        q = self.text_in(query)
        parts = [F.normalize(self.query_proj[f"s_{b}"](q), dim=-1) for b in self.branches]
        return torch.cat(parts, dim=-1) / len(self.branches)

    def hsc_inputs(self, frames, captions, caption_mask):
        return self.encode_videos(frames, captions, caption_mask)


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


class VideoOnlyHead(ProjectedHead):
    """CLIP4Clip meanP on frozen features: cos(query, mean of frames)."""

    def __init__(self, settings: HeadSettings, frame_dim: int, text_dim: int):
        super().__init__(settings, frame_dim, text_dim)
        self.branches = ("tv",)

    def forward(self, query, frames, **_: object) -> Scores:
        score = cosine(self.text_in(query), self.frame_in(frames).mean(1))
        return Scores(score, {"tv": score})

    def video_embeddings(self, frames, **_: object) -> torch.Tensor:
        return F.normalize(self.frame_in(frames).mean(1), dim=-1)

    def query_embeddings(self, query) -> torch.Tensor:
        return F.normalize(self.text_in(query), dim=-1)


class OcrInstancesHead(ProjectedHead):
    """StarVR-style: OCR word tokens attention-pooled (learned query), fused with the video."""

    def __init__(self, settings: HeadSettings, frame_dim: int, text_dim: int):
        super().__init__(settings, frame_dim, text_dim)
        width = self.width
        self.pool_query = nn.Parameter(torch.zeros(1, 1, width))
        self.pool = nn.MultiheadAttention(
            width, settings.heads, dropout=settings.dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(width)
        self.branches = ("tv", "to")

    def _pooled_ocr(self, instances, instance_mask):
        words = self.text_in(instances)
        empty = ~instance_mask.any(dim=1)
        pad = ~instance_mask.clone()
        pad[empty] = False
        query = self.pool_query.expand(words.shape[0], 1, -1)
        pooled = self.norm(
            query + self.pool(query, words, words, key_padding_mask=pad, need_weights=False)[0]
        )
        return pooled.squeeze(1), empty

    def forward(self, query, frames, instances, instance_mask, **_: object) -> Scores:
        q = self.text_in(query)
        tv = cosine(q, self.frame_in(frames).mean(1))
        pooled, empty = self._pooled_ocr(instances, instance_mask)
        to = cosine(q, pooled) * (~empty).to(q.dtype).unsqueeze(0)
        return Scores((tv + to) / 2, {"tv": tv, "to": to})

    def video_embeddings(self, frames, instances, instance_mask, **_: object) -> torch.Tensor:
        pooled, empty = self._pooled_ocr(instances, instance_mask)
        ocr = F.normalize(pooled, dim=-1) * (~empty).to(pooled.dtype).unsqueeze(1)
        return torch.cat([F.normalize(self.frame_in(frames).mean(1), dim=-1), ocr], dim=-1)

    def query_embeddings(self, query) -> torch.Tensor:
        q = F.normalize(self.text_in(query), dim=-1)
        return torch.cat([q, q], dim=-1) / 2


HEADS = {"tcd": TCDHead, "video-only": VideoOnlyHead, "ocr-instances": OcrInstancesHead}


def build_head(settings: HeadSettings, frame_dim: int, text_dim: int) -> nn.Module:
    if settings.kind not in HEADS:
        raise ValueError(f"unknown head {settings.kind!r}; expected one of {', '.join(HEADS)}")
    return HEADS[settings.kind](settings, frame_dim, text_dim)
