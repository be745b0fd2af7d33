"""Head modules: shapes and masks, HSC behaviour, CTCD sensitivity, query-independent mode."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cache.errors import SettingsError
from heads.config import HEAD_KINDS, HeadSettings, TrainSettings
from heads.losses import hsc_loss
from heads.modules import HEADS, ProjectedHead, build_head, cosine

T, DV, DT = 12, 16, 24


def batch(n=5, q=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, T, generator=g) > 0.3
    mask[1] = False  # a video without any scene text
    return {
        "query": F.normalize(torch.randn(q, DT, generator=g), dim=-1),
        "frames": F.normalize(torch.randn(n, T, DV, generator=g), dim=-1),
        "captions": F.normalize(torch.randn(n, T, DT, generator=g), dim=-1) * mask.unsqueeze(-1),
        "caption_mask": mask,
        "instances": F.normalize(torch.randn(n, 7, DT, generator=g), dim=-1),
        "instance_mask": torch.arange(7).expand(n, 7) < torch.tensor([[3], [0], [7], [1], [5]]),
    }


@pytest.mark.parametrize("kind", ["tcd", "video-only", "ocr-instances"])
def test_shapes_and_masks(kind):
    head = build_head(HeadSettings(kind=kind), DV, DT).eval()
    data = batch()
    scores = head(**data)
    assert scores.total.shape == (3, 5)
    assert torch.isfinite(scores.total).all()
    for branch in scores.branches.values():
        assert branch.shape == (3, 5) and torch.isfinite(branch).all()
    if kind == "tcd":
        assert set(scores.branches) == {"tv", "to", "th"}
        assert (scores.branches["to"][:, 1] == 0).all()  # no text: no OCR evidence
    if kind == "ocr-instances":
        assert (scores.branches["to"][:, 1] == 0).all()


@pytest.mark.parametrize("kind", ["tcd", "video-only", "ocr-instances"])
def test_query_independent_embeddings_reproduce_the_score(kind):
    settings = HeadSettings(kind=kind, text_condition="none")
    head = build_head(settings, DV, DT).eval()
    data = batch()
    with torch.no_grad():
        videos = head.video_embeddings(**{k: v for k, v in data.items() if k != "query"})
        queries = head.query_embeddings(data["query"])
        scores = head(**data).total
    assert videos.shape[0] == 5 and videos.dim() == 2  # one vector per video
    torch.testing.assert_close(queries @ videos.T, scores, atol=1e-5, rtol=1e-5)


def reference_scores(head, query, frames, captions, caption_mask, **_):
    """TCD scores computed the direct way: materialise every (query, video) re-weighted
    sequence and run CTCD's nn.MultiheadAttention over it. The head computes the same with
    per-video projections (see ClueDistiller); this is the ground truth it must match."""
    q = head.text_in(query)
    v, o = head.encode_videos(frames, captions, caption_mask)
    nq, (n, t, d) = len(q), v.shape
    v_w, o_w = head.condition(q, v, o, caption_mask)
    v_t, o_t = v_w.unsqueeze(-1) * v, o_w.unsqueeze(-1) * o
    mask = caption_mask.unsqueeze(0).expand(nq, -1, -1)
    pooled = {
        "tv": v_t.mean(2),
        "to": (o_t * mask.unsqueeze(-1)).sum(2) / mask.sum(-1, keepdim=True).clamp(min=1),
    }
    c = head.ctcd
    vv, oo, mm = v_t.reshape(nq * n, t, d), o_t.reshape(nq * n, t, d), mask.reshape(nq * n, t)
    b = len(vv)
    keys_o = torch.cat([(c.null + c.type_o).expand(b, 1, -1), oo + c.type_o], dim=1)
    pad_o = torch.cat([torch.zeros(b, 1, dtype=torch.bool), ~mm], dim=1)
    keys_v = torch.cat([(c.null + c.type_v).expand(b, 1, -1), vv + c.type_v], dim=1)
    c_v = (c.clue_v + c.type_ctx).expand(b, 1, -1)
    c_o = (c.clue_o + c.type_ctx).expand(b, 1, -1)
    c_v = c.norm_v(c_v + c.read_o(c_v, keys_o, keys_o, key_padding_mask=pad_o)[0])
    c_o = c.norm_o(c_o + c.read_v(c_o, keys_v, keys_v)[0])
    pooled["th"] = ((c_v + c_o) / 2).view(nq, n, d)
    branches = [
        cosine(head.query_proj[f"s_{k}"](q), head.video_proj[f"s_{k}"](pooled[k]))
        for k in ("tv", "to", "th")
    ]
    branches[1] = branches[1] * caption_mask.any(1).float()
    return torch.stack(branches).mean(0)


@pytest.mark.parametrize("text_condition", ["softmax-reweight", "none"])
def test_factorised_ctcd_equals_attention_over_materialised_pairs(text_condition):
    head = build_head(HeadSettings(text_condition=text_condition, heads=4), DV, DT).eval()
    with torch.no_grad():  # move the parameters off their identity/zero initialisation
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    data = batch(q=4, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(
            head(**data).total, reference_scores(head, **data), atol=1e-5, rtol=1e-4
        )


def test_text_condition_makes_scores_query_dependent():
    data = batch()
    on = build_head(HeadSettings(), DV, DT).eval()
    off = build_head(HeadSettings(text_condition="none"), DV, DT).eval()
    off.load_state_dict(on.state_dict())
    with torch.no_grad():
        assert not torch.allclose(on(**data).total, off(**data).total)


def test_text_condition_with_uniform_weights_is_the_head_without_it():
    """tau = 0 makes every weight uniform: then the re-weighted sequences are the plain ones,
    for videos with all, some, one or no captions (the weights average 1 over a video's
    captions, not over T)."""
    data = batch(q=4, seed=3)
    data["caption_mask"][0] = True
    data["caption_mask"][2, 1:] = False  # one caption
    uniform = HeadSettings(tau=0.0, heads=4, condition_length="captions")
    on = build_head(uniform, DV, DT).eval()
    off = build_head(dataclasses.replace(uniform, text_condition="none"), DV, DT).eval()
    before = build_head(dataclasses.replace(uniform, condition_length="T"), DV, DT).eval()
    with torch.no_grad():  # trained-like biases: a scaled mean would move against them
        for p in on.parameters():
            p.add_(0.1 * torch.randn_like(p))
        off.load_state_dict(on.state_dict())
        before.load_state_dict(on.state_dict())
        scores_on, scores_off, scores_before = on(**data), off(**data), before(**data)
    for branch in ("tv", "to", "th"):
        torch.testing.assert_close(
            scores_on.branches[branch], scores_off.branches[branch], atol=1e-5, rtol=1e-5
        )
    # runs saved before the setting keep their rule: T over a video's few captions
    assert not torch.allclose(scores_before.branches["to"], scores_off.branches["to"])
    assert HeadSettings().condition_length == "T"


def test_identity_initialisation_starts_from_zero_shot_cosine():
    settings = HeadSettings(text_condition="none", coattn=False, ctcd=False, branches=("tv",))
    head = build_head(settings, DT, DT).eval()
    data = batch()
    data["frames"] = F.normalize(torch.randn(5, T, DT), dim=-1)
    with torch.no_grad():
        expected = cosine(data["query"], data["frames"].mean(1))
        torch.testing.assert_close(head(**data).total, expected)


def test_hsc_is_zero_when_aligned_and_grows_with_misalignment():
    """Cycle frame -> caption -> frame returns home when each caption matches its own frame;
    as captions drift from their frames (noise), the cycle lands elsewhere and the loss grows."""
    torch.manual_seed(0)
    v = F.normalize(torch.randn(8, T, 32), dim=-1)
    mask = torch.ones(8, T, dtype=torch.bool)
    noise = F.normalize(torch.randn(8, T, 32), dim=-1)
    losses = [
        hsc_loss(v, F.normalize((1 - w) * v + w * noise, dim=-1), mask, temperature=0.05).item()
        for w in (0.0, 0.6, 0.8, 1.0)
    ]
    assert losses[0] < 1e-3
    assert losses == sorted(losses) and losses[-1] > 20 * max(losses[0], 1e-4)
    # masked (empty) captions are ignored: garbage there does not change the loss
    mask[:, 5:] = False
    noisy = v.clone()
    noisy[:, 5:] = noise[:, 5:]
    torch.testing.assert_close(hsc_loss(v, v.clone(), mask, 0.05), hsc_loss(v, noisy, mask, 0.05))


def test_ctcd_clue_reads_the_other_modality():
    head = build_head(HeadSettings(), DV, DT).eval()
    distiller = head.ctcd
    v = torch.randn(2, T, DT)
    o = torch.randn(2, T, DT)
    mask = torch.ones(2, T, dtype=torch.bool)

    def clue(v, o, mask):
        return distiller(distiller.prepare(v, o), mask)

    with torch.no_grad():
        base = clue(v, o, mask)
        assert base.shape == (2, DT)
        assert not torch.allclose(base, clue(v, torch.randn(2, T, DT), mask))
        assert not torch.allclose(base, clue(torch.randn(2, T, DT), o, mask))
        empty = clue(v, o, torch.zeros(2, T, dtype=torch.bool))
        assert torch.isfinite(empty).all()


def test_coattention_starts_closed_and_its_gates_learn():
    head = build_head(HeadSettings(dropout=0.0), DV, DT)
    data = batch()
    v, o = head.encode_videos(data["frames"], data["captions"], data["caption_mask"])
    torch.testing.assert_close(v, head.frame_in(data["frames"]))
    torch.testing.assert_close(o, head.text_in(data["captions"]))
    head(**data).total.sum().backward()
    assert head.coattn.gate_v.grad.abs() > 0 and head.coattn.gate_o.grad.abs() > 0


def test_gradients_reach_every_part():
    head = build_head(HeadSettings(dropout=0.0), DV, DT)
    with torch.no_grad():  # open the co-attention gates (zero at init, see the test above)
        head.coattn.gate_v.fill_(0.5)
        head.coattn.gate_o.fill_(0.5)
    data = batch()
    scores = head(**data)
    _, hsc = head.auxiliary_losses(data, TrainSettings())["hsc"]
    (scores.total.sum() + hsc).backward()
    missing = [
        name for name, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


def test_ablation_switches_and_bad_settings():
    data = batch()
    for change in (
        {"coattn": False},
        {"ctcd": False},
        {"branches": ("to",)},
        {"text_condition": "none"},
    ):
        head = build_head(dataclasses.replace(HeadSettings(), **change), DV, DT).eval()
        assert head(**data).total.shape == (3, 5)
    assert set(build_head(HeadSettings(ctcd=False), DV, DT)(**data).branches) == {"tv", "to"}
    with pytest.raises(SettingsError, match="head.kind must be one of"):
        HeadSettings(kind="clip")
    with pytest.raises(SettingsError, match="head.branches .* at least one usable"):
        HeadSettings(ctcd=False, branches=("th",))
    with pytest.raises(SettingsError, match="head.heads = 5 must divide the head width 24"):
        build_head(HeadSettings(heads=5), DV, DT)


def test_every_kind_the_settings_accept_builds():
    assert set(HEAD_KINDS) == set(HEADS)
    for kind in HEAD_KINDS:
        assert isinstance(build_head(HeadSettings(kind=kind), DV, DT), ProjectedHead)


def test_auxiliary_losses_and_ocr_texts_come_from_the_head():
    """What the trainer and the cost table ask a head, so neither branches on its kind."""
    data = batch()
    tcd = build_head(HeadSettings(dropout=0.0), DV, DT)
    settings = TrainSettings(hsc_weight=0.25, hsc_temperature=0.2)
    (name, (weight, loss)), *more = tcd.auxiliary_losses(data, settings).items()
    v, o = tcd.encode_videos(data["frames"], data["captions"], data["caption_mask"])
    assert name == "hsc" and weight == 0.25 and more == []
    torch.testing.assert_close(loss, hsc_loss(v, o, data["caption_mask"], 0.2))
    assert tcd.auxiliary_losses(data, TrainSettings(hsc=False)) == {}
    features = SimpleNamespace(
        n_videos=5,
        caption_mask=data["caption_mask"].numpy(),
        instance_mask=data["instance_mask"].numpy(),
    )
    assert tcd.ocr_texts(features) == data["caption_mask"].sum(1).float().mean().item()
    for kind, texts in (("video-only", 0.0), ("ocr-instances", (3 + 0 + 7 + 1 + 5) / 5)):
        head = build_head(HeadSettings(kind=kind), DV, DT)
        assert head.auxiliary_losses(data, settings) == {}
        assert head.ocr_texts(features) == texts
