"""The TCD head and its baselines as torch modules (DESIGN section 5).

All heads score a batch of queries against a batch of videos and return per-pair scores
`(Q, N)` plus, for TCD, the three branch scores. Inputs are cached, L2-normalised features:

    query      (Q, Dt)      sentence embedding of each query
    frames     (N, T, Dv)   frame embeddings
    captions   (N, T, Dt)   window-caption embeddings, `caption_mask (N, T)` True = has text
    instances  (N, I, Dt)   OCR word embeddings (ocr-instances baseline), `instance_mask (N, I)`

Our choices where the paper is silent (also in README):
- co-attention runs per video before text-condition (query independent, so its cost is per
  video, not per pair); text-condition then re-weights its outputs per (query, video); each
  co-attention update enters through a zero-initialised tanh gate, so the head starts from
  the encoders' features (with a plain residual + LayerNorm it started elsewhere and scored
  about 1 R@1 point lower on the synthetic set);
- co-attention may update only the captions (`coattn_into = "captions"`, configs/tcd.toml):
  frames that read the captions carry OCR content, and the frame branch then no longer tells
  the scene shown with a text from the text itself (README, the temporal study);
- CTCD keys get one learned always-valid null token, so a video without any scene text
  still has a defined clue;
- each branch has a linear projection on the query side and on the video side, identity-
  initialised when widths match, so training starts from the encoders' zero-shot ranking;
- time (frames and window captions share the T segment centres): co-attention routes by a
  time code shared by frame i and caption i (`time_embedding`) and penalises distant times
  (`time_bias`); the text-condition weights of frames add the relevance of the co-timed
  caption (`cotimed_pooling`), so the frame branch looks at what was on screen *while* the
  query's text was. CTCD reads the co-attended features, so it sees time through them;
- HSC and its calibration accuracy read the features before any time information is added
  (`hsc_features`), or a time code would satisfy them trivially.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cache.errors import SettingsError
from heads.config import BRANCHES, CoattnInto, HeadSettings
from heads.losses import hsc_loss

TIME_CODE = 32  # width of the fixed sinusoidal code of a segment index

if TYPE_CHECKING:
    from heads.config import TrainSettings
    from heads.data import Features

__all__ = ["BRANCHES", "HEADS", "HeadSettings", "ProjectedHead", "Scores", "build_head"]


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


def time_code(t: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Fixed sinusoidal codes of segment indices 0..t-1 -> (t, TIME_CODE)."""
    position = torch.arange(t, dtype=torch.float32, device=device)[:, None]
    freqs = torch.exp(
        -math.log(100.0) * torch.arange(TIME_CODE // 2, device=device) / (TIME_CODE // 2)
    )
    return torch.cat([torch.sin(position * freqs), torch.cos(position * freqs)], dim=-1)


def condition_weights(
    logits: torch.Tensor, mask: torch.Tensor | None, per_caption: bool = True
) -> torch.Tensor:
    """Text-condition weights L * softmax over t of (Q, N, T) logits (masked positions get 0;
    all-masked rows give zeros). L is T without a mask; with one, a video's number of
    unmasked positions (`per_caption`), so weights average 1 over the positions that count
    and uniform logits leave the head as without text-condition (DESIGN's T * a, for a full
    sequence), or T (`head.condition_length = "T"`, the rule before: a video's few captions
    got their `to` mean and CTCD's attention logits scaled by T / count)."""
    t = logits.shape[-1]
    if mask is None:
        return t * torch.softmax(logits, dim=-1)
    length = mask.sum(-1).unsqueeze(0).unsqueeze(-1).to(logits.dtype) if per_caption else t
    logits = logits.masked_fill(~mask.unsqueeze(0), float("-inf"))
    return length * torch.softmax(logits, dim=-1).nan_to_num(0.0)


def relevance(q: torch.Tensor, x: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * cos(query, row): (Q, D), (N, T, D) -> (Q, N, T)."""
    return tau * torch.einsum("qd,ntd->qnt", F.normalize(q, dim=-1), F.normalize(x, dim=-1))


@dataclass
class Scores:
    """Final scores (Q, N) and, where the head has branches, each branch's scores."""

    total: torch.Tensor
    branches: dict[str, torch.Tensor]


class ProjectedHead(nn.Module, ABC):
    """The interface of every head, and the input projections they share (frames and texts to
    a common width). Callers (trainer, scoring, index, cost) use only this interface, so none
    needs to know which head it holds.

    Video inputs are the keyword tensors of `Features.video_batch` (frames, captions,
    caption_mask, instances, instance_mask); each head reads the ones it needs.
    """

    branches: tuple[str, ...] = ()  # names of the branch scores `score` returns
    ocr_mask: str | None = None  # the `Features` mask of the OCR texts it reads, if any
    trainable = True  # False: scored as built (zero-shot)

    def __init__(
        self,
        settings: HeadSettings,
        frame_dim: int,
        text_dim: int,
        branches: tuple[str, ...] | None = None,
    ):
        super().__init__()
        self.settings = settings
        self.width = settings.width or text_dim
        self.frame_in = projection(frame_dim, self.width)
        self.text_in = projection(text_dim, self.width)  # shared by queries and captions
        if branches is not None:
            self.branches = tuple(branches)
        n = len(self.branches)
        if settings.fusion == "learned":
            self.fusion_logits = nn.Parameter(torch.zeros(n))
        elif settings.fusion == "validation":  # set by the trainer after training
            self.register_buffer("fusion_chosen", torch.full((n,), 1.0 / n))

    def fusion_weights(self) -> torch.Tensor:
        """The weight of each branch score in the total (they sum to 1)."""
        if self.settings.fusion == "learned":
            return torch.softmax(self.fusion_logits, dim=0)
        if self.settings.fusion == "validation":
            return self.fusion_chosen
        n = len(self.branches)
        return torch.full((n,), 1.0 / n, device=self.frame_in.weight.device)

    def fuse(self, branches: dict[str, torch.Tensor]) -> Scores:
        """The total as the fusion-weighted sum of the branch scores."""
        weights = self.fusion_weights().to(next(iter(branches.values())).dtype)
        total = torch.einsum("b,b...->...", weights, torch.stack(list(branches.values())))
        return Scores(total, branches)

    def hsc_features(self, **videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The frames and captions HSC calibrates, before any time information (None: the
        head has no calibration)."""
        return None

    @abstractmethod
    def encode(self, **videos: torch.Tensor) -> dict[str, torch.Tensor]:
        """The query-independent part of the video side, computed once per video: a dict of
        tensors with the videos on the first axis (so they can be indexed, e.g. candidates)."""

    @abstractmethod
    def score(self, query: torch.Tensor, videos: dict[str, torch.Tensor]) -> Scores:
        """Scores of raw query features (Q, Dt) against encoded videos -> (Q, N)."""

    @abstractmethod
    def video_embeddings(self, **videos: torch.Tensor) -> torch.Tensor:
        """Text-condition off: one vector per video (N, E), for FAISS; its inner product with
        `query_embeddings` equals the query-independent score."""

    @abstractmethod
    def query_embeddings(self, query: torch.Tensor) -> torch.Tensor:
        """One vector per raw query feature (Q, E), the other side of `video_embeddings`."""

    def forward(self, query: torch.Tensor, **videos: torch.Tensor) -> Scores:
        return self.score(query, self.encode(**videos))

    def auxiliary_losses(
        self, videos: dict[str, torch.Tensor], settings: TrainSettings
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """Training-only losses beside InfoNCE on a batch's video inputs, by name: (weight,
        unweighted loss). None by default."""
        return {}

    def ocr_texts(self, features: Features) -> float:
        """Mean number of non-empty OCR texts the head reads per video of `features`."""
        if self.ocr_mask is None or not features.n_videos:
            return 0.0
        return float(getattr(features, self.ocr_mask).sum(1).mean())


class CoAttention(nn.Module):
    """One cross-attention block each way (frames read captions, captions read frames), or
    only the one that updates `into` ("captions": captions read the frames, the frames keep
    their features; "frames": the converse).

    Each update enters through a tanh gate initialised at zero (as in Flamingo's gated
    cross-attention), so training starts from the encoders' own features and learns how
    much of the other modality to mix in; attention inputs are layer-normalised.

    Time (frame i and caption i share segment centre i): with `time_embedding`, a learned map
    of a fixed sinusoidal code of i is added to the attention's queries and keys (not to the
    values), so attention can route by time without changing what is mixed in; with
    `time_bias`, the logits get -a * |i - j| (a >= 0 learned, starting at 1 per segment);
    with `window` k >= 0, only times with |i - j| <= k are read (a frame whose window has no
    caption keeps its features).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        dropout: float,
        time_embedding: bool,
        time_bias: bool,
        window: int = -1,
        into: CoattnInto = "both",
    ):
        super().__init__()
        self.heads = heads
        self.window = window
        self.v_from_o = (
            nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
            if into in ("both", "frames")
            else None
        )
        self.o_from_v = (
            nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
            if into in ("both", "captions")
            else None
        )
        self.norm_v = nn.LayerNorm(width)
        self.norm_o = nn.LayerNorm(width)
        self.gate_v = nn.Parameter(torch.zeros(())) if self.v_from_o is not None else None
        self.gate_o = nn.Parameter(torch.zeros(())) if self.o_from_v is not None else None
        self.time_map = nn.Linear(TIME_CODE, width, bias=False) if time_embedding else None
        if self.time_map is not None:
            nn.init.normal_(self.time_map.weight, std=0.02)
        # softplus(0.5413) = 1.0
        self.time_slope = nn.Parameter(torch.tensor(0.5413)) if time_bias else None

    def forward(
        self, v: torch.Tensor, o: torch.Tensor, o_mask: torch.Tensor, use_time: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, _ = v.shape
        v_in, o_in = self.norm_v(v), self.norm_o(o)
        v_key, o_key = v_in, o_in
        bias = torch.zeros(t, t, dtype=v.dtype, device=v.device)
        if use_time and self.time_map is not None:
            code = self.time_map(time_code(t, v.device).to(v.dtype))
            v_key, o_key = v_in + code, o_in + code
        distance = (
            torch.arange(t, device=v.device)[:, None] - torch.arange(t, device=v.device)
        ).abs()
        if use_time and self.time_slope is not None:
            bias = -F.softplus(self.time_slope) * distance.to(v.dtype)
        far = torch.zeros(t, t, dtype=torch.bool, device=v.device)
        if use_time and self.window >= 0:
            far = distance > self.window
            bias = bias.masked_fill(far, float("-inf"))
        if self.v_from_o is not None:
            # one additive float mask (time bias, window, padding), per video and head
            hidden = ~o_mask[:, None, :] | far  # (N, T, T) keys a frame may not read
            # frames with no caption to read (all of a video without text) keep their features
            blind = hidden.all(dim=-1)
            v_mask = bias.expand(n, t, t).masked_fill(hidden, float("-inf"))
            v_mask = v_mask.masked_fill(blind[..., None], 0.0)  # no all-masked rows (NaN)
            v_mask = v_mask.repeat_interleave(self.heads, dim=0)
            v_att, _ = self.v_from_o(v_key, o_key, o_in, attn_mask=v_mask, need_weights=False)
            v_att = torch.where(blind[..., None], torch.zeros_like(v_att), v_att)
            v = v + torch.tanh(self.gate_v) * v_att
        if self.o_from_v is not None:
            o_att, _ = self.o_from_v(o_key, v_key, v_in, attn_mask=bias, need_weights=False)
            o = o + torch.tanh(self.gate_o) * o_att
        return v, o


class ClueDistiller(nn.Module):
    """CTCD: one learnable clue per modality reads the other modality by cross-attention.

    The text-condition scales each frame/caption row by a per-pair weight `s`, and attention's
    key and value maps are linear, so W(s*x + e) + b = s*(Wx) + (We + b): the projections run
    once per video and each (query, video) pair only re-weights them; the output map, linear
    as well, is applied per head to the value rows once per video. The clue is the only
    attention query and does not depend on the pair, so the attention logits are the per-video
    logits scaled by `s`. Same result as attending over materialised per-pair sequences, at
    O(T*h*D) instead of O(T*D^2) per pair (tests/test_heads.py checks the two agree).
    """

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

    def prepare(self, v: torch.Tensor, o: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-video part: attention logits and mapped value rows of both reads."""
        o_logits, o_values = self._keys_values(self.read_o, self.clue_v, o)
        v_logits, v_values = self._keys_values(self.read_v, self.clue_o, v)
        return {
            "o_logits": o_logits,
            "o_values": o_values,
            "v_logits": v_logits,
            "v_values": v_values,
        }

    def forward(
        self,
        prepared: dict[str, torch.Tensor],
        o_mask: torch.Tensor,
        v_scale: torch.Tensor | None = None,
        o_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """prepared: from `prepare` (N videos); o_mask (N, T); v_scale, o_scale: (Q, N, T)
        text-condition weights, None for unconditioned. Returns the hybrid clue, (Q, N, D) or
        (N, D) without scales."""
        pairs = v_scale is not None
        if v_scale is None or o_scale is None:
            n, t = o_mask.shape
            v_scale = o_scale = torch.ones(
                1, n, t, dtype=prepared["o_values"].dtype, device=o_mask.device
            )
        c_v = self._attend(
            self.read_o,
            self.clue_v,
            self.type_o,
            prepared["o_logits"],
            prepared["o_values"],
            o_scale,
            o_mask,
        )
        c_o = self._attend(
            self.read_v,
            self.clue_o,
            self.type_v,
            prepared["v_logits"],
            prepared["v_values"],
            v_scale,
            None,
        )
        c_v = self.norm_v(self.clue_v + self.type_ctx + c_v)
        c_o = self.norm_o(self.clue_o + self.type_ctx + c_o)
        clue = (c_v + c_o) / 2
        return clue if pairs else clue.squeeze(0)

    def _maps(self, attn: nn.MultiheadAttention, clue: torch.Tensor):
        """The clue's scaled attention query (h, D/h), the key, value and output maps."""
        d, h = attn.embed_dim, attn.num_heads
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        query = F.linear((clue + self.type_ctx).view(1, d), w_q, b_q).view(h, d // h)
        w_out = attn.out_proj.weight.view(d, h, d // h)

        def values(rows: torch.Tensor, bias: bool) -> torch.Tensor:  # (..., D) -> (..., h, D)
            v = F.linear(rows, w_v, b_v if bias else None)
            return torch.einsum("...hc,ehc->...he", v.view(*v.shape[:-1], h, d // h), w_out)

        return query / (d // h) ** 0.5, (w_k, b_k), values

    def _keys_values(
        self, attn: nn.MultiheadAttention, clue: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per video: the clue's logits over the rows of x (N, h, T) and their values
        (N, T, h, D) already through the output map (bias-free: biases enter in _attend)."""
        n, t, _ = x.shape
        query, (w_k, _), values = self._maps(attn, clue)
        keys = F.linear(x, w_k).view(n, t, attn.num_heads, -1)
        return torch.einsum("hc,nthc->nht", query, keys), values(x, bias=False)

    def _attend(
        self,
        attn: nn.MultiheadAttention,
        clue: torch.Tensor,
        type_x: torch.Tensor,
        logit_x: torch.Tensor,
        value_x: torch.Tensor,
        scale: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Per pair: cross-attention of the clue over [null; scale * x + type_x] -> (Q, N, D)."""
        d, h = attn.embed_dim, attn.num_heads
        query, (w_k, b_k), values = self._maps(attn, clue)
        null = (self.null + type_x).view(d)
        k_e, k_null = F.linear(type_x.view(d), w_k, b_k), F.linear(null, w_k, b_k)
        v_e, v_null = values(type_x.view(d), bias=True), values(null, bias=True)  # (h, D)
        logit_e = (query * k_e.view(h, -1)).sum(-1)  # (h,)
        logit_null = (query * k_null.view(h, -1)).sum(-1)
        logits = scale.unsqueeze(2) * logit_x.unsqueeze(0) + logit_e[:, None]  # (Q, N, h, T)
        if mask is not None:
            logits = logits.masked_fill(~mask[None, :, None, :], float("-inf"))
        q_n, n = scale.shape[:2]
        logits = torch.cat([logit_null[None, None, :, None].expand(q_n, n, h, 1), logits], -1)
        weights = F.dropout(torch.softmax(logits, dim=-1), attn.dropout, self.training)
        w_null, w_x = weights[..., 0], weights[..., 1:]
        return (
            torch.einsum("qnht,nthe->qne", w_x * scale.unsqueeze(2), value_x)
            + torch.einsum("qnh,he->qne", w_x.sum(-1), v_e)
            + torch.einsum("qnh,he->qne", w_null, v_null)
            + attn.out_proj.bias
        )


class TCDHead(ProjectedHead):
    """Text-condition + co-attention + CTCD, three matchings (tv, to, th), mean score."""

    ocr_mask = "caption_mask"

    def __init__(self, settings: HeadSettings, frame_dim: int, text_dim: int):
        # th needs CTCD (HeadSettings checks that at least one branch remains)
        branches = tuple(b for b in settings.branches if b != "th" or settings.ctcd)
        super().__init__(settings, frame_dim, text_dim, branches)
        width = self.width
        self.coattn = (
            CoAttention(
                width,
                settings.heads,
                settings.dropout,
                settings.time_embedding,
                settings.time_bias,
                settings.coattn_window,
                settings.coattn_into,
            )
            if settings.coattn
            else None
        )
        self.ctcd = (
            ClueDistiller(width, settings.heads, settings.dropout) if settings.ctcd else None
        )
        # ModuleDict keys cannot be "to" (nn.Module.to), hence the "s_" prefix
        self.query_proj = nn.ModuleDict({f"s_{b}": projection(width, width) for b in self.branches})
        self.video_proj = nn.ModuleDict({f"s_{b}": projection(width, width) for b in self.branches})

    def encode_videos(self, frames, captions, caption_mask, use_time: bool = True):
        """Query-independent part: projections and co-attention -> (V, O) each (N, T, D)."""
        v = self.frame_in(frames)
        o = self.text_in(captions)
        if self.coattn is not None:
            v, o = self.coattn(v, o, caption_mask, use_time)
        return v, o

    def hsc_features(self, frames, captions, caption_mask, **_: object):
        return self.encode_videos(frames, captions, caption_mask, use_time=False)

    def condition(
        self, q: torch.Tensor, v: torch.Tensor, o: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-condition weights of frames and captions, L * softmax(tau * cos(t, x_i)) each
        (`condition_weights`): (Q, D), (N, T, D) x2 -> (Q, N, T) x2. With `cotimed_pooling` a
        frame's logit adds its co-timed caption's (when that caption has text).

        The re-weighted sequence is `weights[..., None] * x`; it is never materialised."""
        q_n, (n, t, _) = q.shape[0], v.shape
        if self.settings.text_condition == "none":
            ones = torch.ones(q_n, n, t, dtype=v.dtype, device=v.device)
            return ones, ones
        tau = self.settings.tau
        o_logits = relevance(q, o, tau)
        v_logits = relevance(q, v, tau)
        if self.settings.cotimed_pooling:
            v_logits = v_logits + o_logits * mask.unsqueeze(0).to(v.dtype)
        per_caption = self.settings.condition_length == "captions"
        return condition_weights(v_logits, None), condition_weights(o_logits, mask, per_caption)

    def encode(self, frames, captions, caption_mask, **_: object) -> dict[str, torch.Tensor]:
        """Per video: co-attended V and O, their rows through the tv/to branch projections
        (linear maps commute with the weighted mean of `score`), and CTCD's prepared part."""
        v, o = self.encode_videos(frames, captions, caption_mask)
        out = {"v": v, "o": o, "caption_mask": caption_mask}
        for branch, x in (("tv", v), ("to", o)):
            if branch in self.branches:
                out[f"{branch}_rows"] = F.linear(x, self.video_proj[f"s_{branch}"].weight)
        if "th" in self.branches:
            out.update(self.ctcd.prepare(v, o))
        return out

    def score(self, query: torch.Tensor, videos: dict[str, torch.Tensor]) -> Scores:
        v, o, caption_mask = videos["v"], videos["o"], videos["caption_mask"]
        q = self.text_in(query)
        v_w, o_w = self.condition(q, v, o, caption_mask)
        has_text = caption_mask.any(dim=1)
        counts = caption_mask.sum(1).clamp(min=1).to(o.dtype)[:, None]
        pooled = {}  # projected masked means of the re-weighted sequences, per pair
        if "tv" in self.branches:
            pooled["tv"] = self._pool_projected("tv", v_w, videos["tv_rows"], v.shape[1])
        if "to" in self.branches:
            pooled["to"] = self._pool_projected("to", o_w * caption_mask, videos["to_rows"], counts)
        if "th" in self.branches:
            clue = self.ctcd(videos, caption_mask, v_w, o_w)
            pooled["th"] = self.video_proj["s_th"](clue)
        branches = {b: cosine(self.query_proj[f"s_{b}"](q), pooled[b]) for b in self.branches}
        if "to" in branches:  # a video without scene text has no OCR evidence, not negative
            branches["to"] = branches["to"] * has_text.to(q.dtype).unsqueeze(0)
        return self.fuse(branches)

    def _pool_projected(
        self, branch: str, weights: torch.Tensor, rows: torch.Tensor, norm: torch.Tensor | int
    ) -> torch.Tensor:
        """video_proj(sum_t weights_t * x_t / norm) per pair, from the projected rows W x_t:
        (Q, N, T), (N, T, D) -> (Q, N, D)."""
        bias = self.video_proj[f"s_{branch}"].bias
        return torch.einsum("qnt,ntd->qnd", weights, rows) / norm + bias

    def video_embeddings(self, frames, captions, caption_mask, **_: object) -> torch.Tensor:
        """Text-condition off: one vector per video, (N, len(branches) * D), for FAISS.

        Its inner product with `query_embeddings` equals the query-independent score S.
        """
        v, o = self.encode_videos(frames, captions, caption_mask)
        pooled = {"tv": v.mean(1), "to": masked_mean(o, caption_mask, dim=1)}
        if "th" in self.branches:
            pooled["th"] = self.ctcd(self.ctcd.prepare(v, o), caption_mask)
        parts = [F.normalize(self.video_proj[f"s_{b}"](pooled[b]), dim=-1) for b in self.branches]
        if "to" in self.branches:
            i = self.branches.index("to")
            parts[i] = parts[i] * caption_mask.any(dim=1, keepdim=True).to(parts[i].dtype)
        return torch.cat(parts, dim=-1)

    def query_embeddings(self, query) -> torch.Tensor:
        q = self.text_in(query)
        weights = self.fusion_weights()
        parts = [
            weights[i] * F.normalize(self.query_proj[f"s_{b}"](q), dim=-1)
            for i, b in enumerate(self.branches)
        ]
        return torch.cat(parts, dim=-1)

    def auxiliary_losses(
        self, videos: dict[str, torch.Tensor], settings: TrainSettings
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """HSC (`train.hsc`) on the co-attended frames and captions, weight `hsc_weight`."""
        if not settings.hsc:
            return {}
        v, o = self.hsc_features(**videos)
        loss = hsc_loss(v, o, videos["caption_mask"], settings.hsc_temperature, settings.hsc_form)
        return {"hsc": (settings.hsc_weight, loss)}


class VideoOnlyHead(ProjectedHead):
    """CLIP4Clip meanP on frozen features: cos(query, mean of frames)."""

    branches = ("tv",)

    def encode(self, frames, **_: object) -> dict[str, torch.Tensor]:
        return {"v": self.frame_in(frames).mean(1)}

    def score(self, query: torch.Tensor, videos: dict[str, torch.Tensor]) -> Scores:
        score = cosine(self.text_in(query), videos["v"])
        return Scores(score, {"tv": score})

    def video_embeddings(self, frames, **_: object) -> torch.Tensor:
        return F.normalize(self.frame_in(frames).mean(1), dim=-1)

    def query_embeddings(self, query) -> torch.Tensor:
        return F.normalize(self.text_in(query), dim=-1)


class OcrInstancesHead(ProjectedHead):
    """StarVR-style: OCR word tokens attention-pooled (learned query), fused with the video."""

    branches = ("tv", "to")
    ocr_mask = "instance_mask"

    def __init__(self, settings: HeadSettings, frame_dim: int, text_dim: int):
        super().__init__(settings, frame_dim, text_dim)
        width = self.width
        self.pool_query = nn.Parameter(torch.zeros(1, 1, width))
        self.pool = nn.MultiheadAttention(
            width, settings.heads, dropout=settings.dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(width)

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

    def encode(self, frames, instances, instance_mask, **_: object) -> dict[str, torch.Tensor]:
        pooled, empty = self._pooled_ocr(instances, instance_mask)
        return {"v": self.frame_in(frames).mean(1), "ocr": pooled, "empty": empty}

    def score(self, query: torch.Tensor, videos: dict[str, torch.Tensor]) -> Scores:
        q = self.text_in(query)
        tv = cosine(q, videos["v"])
        to = cosine(q, videos["ocr"]) * (~videos["empty"]).to(q.dtype).unsqueeze(0)
        return self.fuse({"tv": tv, "to": to})

    def video_embeddings(self, frames, instances, instance_mask, **_: object) -> torch.Tensor:
        pooled, empty = self._pooled_ocr(instances, instance_mask)
        ocr = F.normalize(pooled, dim=-1) * (~empty).to(pooled.dtype).unsqueeze(1)
        return torch.cat([F.normalize(self.frame_in(frames).mean(1), dim=-1), ocr], dim=-1)

    def query_embeddings(self, query) -> torch.Tensor:
        q = F.normalize(self.text_in(query), dim=-1)
        w = self.fusion_weights()
        return torch.cat([w[0] * q, w[1] * q], dim=-1)


class ZeroShotHead(ProjectedHead):
    """No training: the frozen encoders' own matching, with identity projections.

    S_TO: the query against the window captions, text-conditioned as TCD pools them
    (L * softmax(tau * cos) weights over captions with text), cosine with the pooled caption;
    0 for a video without scene text. S_TV: the same against the frames, only when frames and
    texts come from one two-tower model (`Features.shared_space`, a CLIP directory for both);
    otherwise the head has no S_TV branch at all. Total: the mean of the branches it has.
    """

    ocr_mask = "caption_mask"
    trainable = False

    def __init__(
        self, settings: HeadSettings, frame_dim: int, text_dim: int, shared_space: bool = False
    ):
        if shared_space and frame_dim != text_dim:
            raise SettingsError(
                f"a shared frame/text space needs equal widths, got frames {frame_dim} and "
                f"texts {text_dim}"
            )
        super().__init__(settings, frame_dim, text_dim, ("tv", "to") if shared_space else ("to",))
        self.requires_grad_(False)

    def encode(self, frames, captions, caption_mask, **_: object) -> dict[str, torch.Tensor]:
        return {"v": frames, "o": captions, "caption_mask": caption_mask}

    def _pooled(self, q: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None):
        if self.settings.text_condition == "none":
            logits = torch.zeros(len(q), *x.shape[:2], dtype=x.dtype, device=x.device)
        else:
            logits = relevance(q, x, self.settings.tau)
        weights = condition_weights(logits, mask)
        return torch.einsum("qnt,ntd->qnd", weights, x)  # the norm does not change a cosine

    def score(self, query: torch.Tensor, videos: dict[str, torch.Tensor]) -> Scores:
        v, o, mask = videos["v"], videos["o"], videos["caption_mask"]
        branches = {}
        if "tv" in self.branches:
            branches["tv"] = cosine(query, self._pooled(query, v, None))
        has_text = mask.any(dim=1).to(query.dtype).unsqueeze(0)
        branches["to"] = cosine(query, self._pooled(query, o, mask)) * has_text
        return self.fuse(branches)

    def video_embeddings(self, frames, captions, caption_mask, **_: object) -> torch.Tensor:
        to = F.normalize(masked_mean(captions, caption_mask, dim=1), dim=-1)
        to = to * caption_mask.any(dim=1, keepdim=True).to(to.dtype)
        if "tv" not in self.branches:
            return to
        return torch.cat([F.normalize(frames.mean(1), dim=-1), to], dim=-1)

    def query_embeddings(self, query) -> torch.Tensor:
        q = F.normalize(query, dim=-1)
        w = self.fusion_weights()
        return torch.cat([w[i] * q for i in range(len(self.branches))], dim=-1)


HEADS = {
    "tcd": TCDHead,
    "video-only": VideoOnlyHead,
    "ocr-instances": OcrInstancesHead,
    "zero-shot": ZeroShotHead,
}


def build_head(
    settings: HeadSettings, frame_dim: int, text_dim: int, shared_space: bool = False
) -> ProjectedHead:
    """The head `settings.kind` names (the kind is checked when the settings are made).
    `shared_space`: frames and texts come from one two-tower model (only zero-shot uses it)."""
    width = settings.width or text_dim
    if width % settings.heads:
        raise SettingsError(
            f"head.heads = {settings.heads} must divide the head width {width} (the text "
            "encoder's width when head.width = 0); change head.heads or set head.width"
        )
    if settings.kind == "zero-shot":
        return ZeroShotHead(settings, frame_dim, text_dim, shared_space)
    return HEADS[settings.kind](settings, frame_dim, text_dim)
