"""Issue 15's head parts: time awareness, HSC's forms and diagnostics, the zero-shot and
untrained runs, fusion and validation-based selection."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cache.errors import SettingsError
from heads.config import HeadSettings, RunConfig, TrainSettings
from heads.losses import calibration_accuracy, hsc_loss, hsc_uniform, shot_ids
from heads.modules import build_head
from heads.run_dir import RunDir
from heads.scoring import score_branches, score_matrix
from heads.train import initial_model, simplex_grid, train
from tests.test_train import DT, DV, FAST, planted

T = 8


def videos(n=4, seed=0, dv=DV, dt=DT):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, T, generator=g) < 0.8
    mask[:, 0] = True
    return {
        "frames": F.normalize(torch.randn(n, T, dv, generator=g), dim=-1),
        "captions": F.normalize(torch.randn(n, T, dt, generator=g), dim=-1) * mask[..., None],
        "caption_mask": mask,
        "instances": torch.zeros(n, 2, dt),
        "instance_mask": torch.zeros(n, 2, dtype=torch.bool),
    }


def shifted(data, by=3):
    """Captions moved `by` segments later relative to the frames (frames untouched)."""
    return {
        **data,
        "captions": data["captions"].roll(by, dims=1),
        "caption_mask": data["caption_mask"].roll(by, dims=1),
    }


def opened(head):
    """Move every parameter off its initialisation (gates open, time maps non-zero)."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return head


@pytest.mark.parametrize(
    "switch", ["time_embedding", "time_bias", "cotimed_pooling"], ids=lambda s: f"only-{s}"
)
def test_each_time_switch_makes_scores_depend_on_when_captions_are_shown(switch):
    off = {"time_embedding": False, "time_bias": False, "cotimed_pooling": False}
    query = F.normalize(torch.randn(3, DT, generator=torch.Generator().manual_seed(2)), dim=-1)
    data = videos()
    bag = opened(build_head(HeadSettings(heads=2, dropout=0.0, **off), DV, DT)).eval()
    timed = opened(
        build_head(HeadSettings(heads=2, dropout=0.0, **{**off, switch: True}), DV, DT)
    ).eval()
    with torch.no_grad():
        # without time the head is a bag: shifting captions against frames changes nothing
        torch.testing.assert_close(bag(query, **data).total, bag(query, **shifted(data)).total)
        before, after = timed(query, **data).total, timed(query, **shifted(data)).total
    assert (before - after).abs().max() > 1e-3


def test_time_parts_keep_the_faiss_factorisation_and_start_as_a_bag_for_coattention():
    head = build_head(HeadSettings(heads=2, cotimed_pooling=False), DV, DT).eval()
    query, data = F.normalize(torch.randn(3, DT), dim=-1), videos()
    with torch.no_grad():  # gates start closed: time in co-attention has no effect yet
        torch.testing.assert_close(head(query, **data).total, head(query, **shifted(data)).total)
        opened(head)
        # FAISS vectors reproduce the text-condition-off score, time parts included
        flat = build_head(dataclasses.replace(head.settings, text_condition="none"), DV, DT)
        flat.load_state_dict(head.state_dict())
        torch.testing.assert_close(
            head.query_embeddings(query) @ head.video_embeddings(**data).T,
            flat.eval()(query, **data).total,
            atol=1e-5,
            rtol=1e-5,
        )


# -- HSC ----------------------------------------------------------------------------------------
def test_hsc_cycle_is_blind_to_caption_order_and_the_index_term_is_not():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, T, 16, generator=g)
    o = v + 0.1 * torch.randn(3, T, 16, generator=g)  # caption i describes frame i
    mask = torch.ones(3, T, dtype=torch.bool)
    perm = torch.randperm(T, generator=g)
    cycle = [hsc_loss(v, x, mask, 0.1, "cycle") for x in (o, o[:, perm])]
    indexed = [hsc_loss(v, x, mask, 0.1, "cycle+index") for x in (o, o[:, perm])]
    torch.testing.assert_close(cycle[0], cycle[1], atol=1e-5, rtol=1e-4)
    assert indexed[1] > indexed[0] + 0.02  # shuffled captions no longer sit at their frames


def test_hsc_back_step_is_cosine():
    """Scaling one video's captions does not change its loss (cosines throughout), and the loss
    equals the direct formula with a normalised soft-nearest caption."""
    g = torch.Generator().manual_seed(3)
    v, o = torch.randn(1, T, 8, generator=g), torch.randn(1, T, 8, generator=g)
    mask = torch.ones(1, T, dtype=torch.bool)
    vn, on = F.normalize(v, dim=-1), F.normalize(o, dim=-1)
    nearest = F.normalize(torch.softmax(vn[0] @ on[0].T / 0.1, -1) @ on[0], dim=-1)
    mu = torch.softmax(nearest @ vn[0].T / 0.1, -1) @ torch.arange(T).float()
    back = torch.softmax(on[0] @ vn[0].T / 0.1, -1) @ vn[0]
    mu_o = torch.softmax(F.normalize(back, dim=-1) @ on[0].T / 0.1, -1) @ torch.arange(T).float()
    index = torch.arange(T).float()
    expected = (((index - mu) ** 2).sum() + ((index - mu_o) ** 2).sum()) / T**2 / (2 * T)
    torch.testing.assert_close(hsc_loss(v, o, mask), expected, atol=1e-5, rtol=1e-4)


def test_hsc_uniform_guess_value():
    mask = torch.ones(2, 12, dtype=torch.bool)
    assert hsc_uniform(mask) == pytest.approx((12**2 - 1) / 12 / 12**2, rel=1e-5)  # 0.0828


def test_shots_and_calibration_accuracy():
    g = np.random.default_rng(0)
    scenes = g.normal(size=(3, 16))
    layout = np.array([0, 0, 0, 1, 1, 2, 2, 2])  # three shots with hard cuts
    frames = scenes[layout][None] + 0.05 * g.normal(size=(1, T, 16))
    assert shot_ids(frames).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    shots = shot_ids(frames)
    v = torch.from_numpy(frames).float()
    mask = torch.ones(1, T, dtype=torch.bool)
    acc, chance, n = calibration_accuracy(v, v + 0.01, mask, shots)
    assert (acc, n) == (1.0, T)
    assert chance == pytest.approx((3 * 3 + 2 * 2 + 3 * 3) / (T * T))
    wrong = calibration_accuracy(v, v.roll(3, dims=1), mask, shots)[0]
    assert wrong < 0.5  # captions of another shot at each time
    single = calibration_accuracy(v[:, :3], v[:, :3], mask[:, :3], shots[:, :3])
    assert single[2] == 0  # one-shot videos are not counted (trivially right)


def test_epochs_log_holds_hsc_diagnostics(tmp_path):
    data = planted(n=64)
    config = RunConfig(HeadSettings(heads=2), dataclasses.replace(FAST, epochs=2))
    train(config, data, RunDir.at(tmp_path / "run"))
    record = RunDir.at(tmp_path / "run").epochs()[0]
    assert record["hsc_uniform"] == pytest.approx(
        hsc_uniform(torch.from_numpy(data.caption_mask[:1].repeat(2, 0) | True)), abs=0.02
    )
    assert {"hsc", "calib_acc", "calib_chance", "calib_frames"} <= set(record)


# -- zero-shot, untrained, fusion, selection ----------------------------------------------------
def test_zero_shot_head_branches_and_scores():
    data = videos(dv=DT)
    query = F.normalize(torch.randn(3, DT), dim=-1)
    settings = HeadSettings(kind="zero-shot")
    text_only = build_head(settings, DV, DT)
    two_tower = build_head(settings, DT, DT, shared_space=True)
    assert text_only.branches == ("to",) and two_tower.branches == ("tv", "to")
    assert not any(p.requires_grad for p in two_tower.parameters())
    with torch.no_grad():
        scores = two_tower(query, **data)
        # by hand: softmax(tau * cos) weights over captions with text, cosine with the pool
        cos = torch.einsum("qd,ntd->qnt", query, data["captions"])
        w = torch.softmax((5 * cos).masked_fill(~data["caption_mask"], -torch.inf), -1)
        pooled = torch.einsum("qnt,ntd->qnd", w, data["captions"])
        expected = torch.einsum("qd,qnd->qn", query, F.normalize(pooled, dim=-1))
        torch.testing.assert_close(scores.branches["to"], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scores.total, (scores.branches["tv"] + expected) / 2)
        flat = build_head(dataclasses.replace(settings, text_condition="none"), DT, DT, True)
        torch.testing.assert_close(
            flat.query_embeddings(query) @ flat.video_embeddings(**data).T,
            flat(query, **data).total,
            atol=1e-5,
            rtol=1e-5,
        )
    with pytest.raises(SettingsError, match="train.epochs must be 0"):
        RunConfig(settings, TrainSettings(epochs=3))


def test_zero_shot_and_untrained_runs_keep_the_initial_head(tmp_path):
    data = planted(n=48)
    zero = RunConfig(HeadSettings(kind="zero-shot", heads=2), TrainSettings(epochs=0))
    untrained = RunConfig(HeadSettings(heads=2), dataclasses.replace(FAST, epochs=0))
    for name, config in (("zero", zero), ("untrained", untrained)):
        run = RunDir.at(tmp_path / name)
        best = train(config, data, run)
        assert best["epoch"] == -1 and run.finished(config) is not None
        head, _ = run.load_head(DV, DT)
        expected = initial_model(config, data).head
        np.testing.assert_array_equal(score_matrix(head, data), score_matrix(expected, data))
        assert train(config, data, run) == best  # finished: nothing to do


def test_validation_fusion_down_weights_a_branch_without_signal(tmp_path):
    data = planted(n=96)
    # frames carry no query signal in the planted data and nothing mixes captions into them
    # here (no co-attention, no co-timed pooling): tv should get little weight
    config = RunConfig(
        HeadSettings(
            heads=2,
            fusion="validation",
            branches=("tv", "to"),
            ctcd=False,
            coattn=False,
            cotimed_pooling=False,
        ),
        dataclasses.replace(FAST, val_fraction=0.3),
    )
    best = train(config, data, RunDir.at(tmp_path / "run"))
    head, _ = RunDir.at(tmp_path / "run").load_head(DV, DT)
    weights = dict(zip(head.branches, head.fusion_weights().tolist(), strict=True))
    assert weights == pytest.approx(best["fusion"])
    assert weights["to"] > weights["tv"]
    branches = score_branches(head, data)
    np.testing.assert_allclose(
        score_matrix(head, data),
        weights["tv"] * branches["tv"] + weights["to"] * branches["to"],
        atol=1e-5,
    )
    assert len(simplex_grid(3, 10)) == 66


def test_learned_fusion_is_a_parameter_that_starts_at_the_mean():
    head = build_head(HeadSettings(heads=2, fusion="learned"), DV, DT)
    assert head.fusion_logits.requires_grad
    torch.testing.assert_close(head.fusion_weights(), torch.full((3,), 1 / 3))


def test_selection_by_validation_loss_keeps_the_lowest_loss_epoch(tmp_path):
    data = planted(n=64)
    config = RunConfig(HeadSettings(heads=2), dataclasses.replace(FAST, epochs=4))
    best = train(config, data, RunDir.at(tmp_path / "run"))
    epochs = RunDir.at(tmp_path / "run").epochs()
    assert best["val_loss"] == min(e["val_loss"] for e in epochs)
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["epoch"] == 3


def test_coattention_into_captions_keeps_the_frames_and_a_window_reads_only_nearby_times():
    data = videos()
    frames, captions, mask = data["frames"], data["captions"], data["caption_mask"]
    into = opened(
        build_head(HeadSettings(heads=2, dropout=0.0, coattn_into="captions"), DV, DT)
    ).eval()
    assert into.coattn.v_from_o is None and into.coattn.gate_v is None
    with torch.no_grad():
        v, o = into.encode_videos(frames, captions, mask)
        torch.testing.assert_close(v, into.frame_in(frames))  # frames keep their features
        assert (o - into.text_in(captions)).abs().max() > 1e-3  # captions read the frames

    window = opened(build_head(HeadSettings(heads=2, dropout=0.0, coattn_window=0), DV, DT)).eval()
    changed = captions.clone()
    changed[:, 5] = F.normalize(torch.randn(len(changed), DT), dim=-1)
    changed_mask = mask.clone()
    changed_mask[:, 5] = True
    with torch.no_grad():
        v, _ = window.encode_videos(frames, captions, mask)
        v2, _ = window.encode_videos(frames, changed, changed_mask)
        assert torch.isfinite(v).all()  # frames whose own caption is empty read nothing
        others = [i for i in range(T) if i != 5]
        torch.testing.assert_close(v[:, others], v2[:, others])  # frame i reads caption i only
        assert (v[:, 5] - v2[:, 5]).abs().max() > 1e-3
        # without time (HSC's view) the window is off: every frame reads every caption
        v, _ = window.encode_videos(frames, captions, mask, use_time=False)
        v2, _ = window.encode_videos(frames, changed, changed_mask, use_time=False)
        assert (v[:, 0] - v2[:, 0]).abs().max() > 1e-3

    for bad in ({"coattn_into": "audio"}, {"coattn_window": -2}):
        with pytest.raises(SettingsError, match="head.coattn_"):
            HeadSettings(**bad)
