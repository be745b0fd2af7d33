"""The temporal synthetic profile: determinism, shots and cuts, the hard-negative families it
promises (and their bookkeeping), scenes a frozen random ViT tells apart, and the CLI."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from heads.groups import parse_groups
from pipeline import synth_temporal as st
from pipeline.datasets import read_textvr, textvr_rand_columns
from pipeline.synth import _ocr_tracks

# short videos, at most 3 shots: the generated sets of these tests stay small
FAST = st.TemporalSettings(max_seconds=6.0, max_shots=3)


def digest_tree(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def plans_300():
    """The default 300-video plan (seed 0): planning only, no video is written."""
    return st.plan_videos(300, 0)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("temporal")
    plans = st.generate(out, 8, seed=4, with_ocr_json=True, settings=FAST, progress=False)
    return out, plans


def shown(plan):
    """(text, scene) pairs a video shows: a shot's texts with its scene, overlays with all."""
    pairs = set()
    for item in plan.texts:
        scenes = [plan.shots[item.shot].scene] if item.shot >= 0 else [s.scene for s in plan.shots]
        pairs.update((item.text, scene) for scene in scenes)
    return pairs


def key_scene(plan):
    return plan.shots[plan.key_shot].scene


def test_output_is_byte_identical_per_seed(small_set, tmp_path):
    out, _ = small_set
    st.generate(tmp_path / "b", 8, seed=4, with_ocr_json=True, settings=FAST, progress=False,
                workers=2)  # fmt: skip
    assert digest_tree(out) == digest_tree(tmp_path / "b")
    assert {"synth_meta.json", "synth_groups.json", "TextVR_test_rand.json"} <= {
        p.name for p in out.iterdir()
    }
    other = st.plan_videos(8, seed=5, settings=FAST)
    assert [p.captions for p in other] != [p.captions for p in small_set[1]]


def test_meta_groups_and_annotations_agree(small_set):
    out, plans = small_set
    meta = json.loads((out / "synth_meta.json").read_text())
    groups = json.loads((out / "synth_groups.json").read_text())
    dataset = read_textvr(out)
    videos = {v["path"]: v for v in meta["videos"]}
    assert meta["profile"] == "temporal" and set(meta["families"]) == set(st.FAMILIES)
    assert sorted(videos) == sorted(v.id for v in dataset.videos)
    test_ids = set()
    for video in dataset.videos:
        truth = videos[video.id]
        assert video.split == truth["split"]
        assert video.domain == truth["shots"][truth["key_shot"]]["domain"]
        for caption in video.captions:
            assert truth["query_text"] in caption
        if video.split == "test":
            assert len(video.captions) == 1
            test_ids.update(f"{video.id}#{k}" for k in range(len(video.captions)))
        else:
            assert len(video.captions) >= 2
    assert set(groups) == test_ids  # every test caption has a family, no train caption does
    queries = {q["id"]: q for q in meta["queries"]}
    for caption_id, entry in groups.items():
        video = videos[caption_id.split("#")[0]]
        assert entry["group"] == video["family"] == queries[caption_id]["family"]
        assert ("twin" in entry) == (video["family"] == "twin-swap")
        if "twin" in entry:
            assert entry["twin"] == video["twin"] and videos[entry["twin"]]["split"] == "test"
    if len(groups) > 1:
        cols = textvr_rand_columns(out / "TextVR_test.json", out / "TextVR_test_rand.json")
        assert sorted(cols) == list(range(len(cols)))
    for plan in plans:  # the ground-truth OCR holds every text, and nothing else
        ocr = json.loads(
            (out / "Kwai_VideoOCR" / plan.rel_path.replace(".mp4", ".json")).read_text()
        )
        assert ocr == json.loads(json.dumps(_ocr_tracks(plan, FAST)))
        assert {t["text"] for t in ocr.values()} == {t.text for t in plan.texts}


def test_shots_are_2_to_4_scenes_joined_by_hard_cuts(plans_300):
    settings = st.TemporalSettings()
    assert {len(p.shots) for p in plans_300} == {2, 3, 4}
    for plan in plans_300:
        assert settings.min_seconds <= plan.seconds <= settings.max_seconds
        shots = plan.shots
        assert shots[0].start == 0 and shots[-1].end == plan.seconds
        assert all(a.end == b.start for a, b in zip(shots, shots[1:], strict=False))
        assert all(s.end - s.start >= settings.min_shot_seconds - 0.051 for s in shots)
        assert all(
            abs(s.start * settings.fps - round(s.start * settings.fps)) < 1e-6 for s in shots
        )
        assert len({s.scene for s in shots}) == len(shots)
        for item in plan.texts:  # a shot's texts never outlive it (nor reach the cut's frame)
            if item.shot >= 0:
                shot = shots[item.shot]
                assert shot.start <= item.start < item.end < shot.end
        assert all(sum(t.shot == i for t in plan.texts) >= 2 for i in range(len(shots)))
    # a cut changes the whole picture; within a shot, frames change a little
    plan = next(p for p in plans_300 if len(p.shots) == 4)
    frames = {round(f / settings.fps, 1): None for f in range(int(plan.seconds * settings.fps))}
    diffs = []
    for t0 in list(frames)[:-1]:
        t1 = round(t0 + 1 / settings.fps, 1)
        a = np.asarray(st.render_frame(plan, t0, settings)).astype(int)
        b = np.asarray(st.render_frame(plan, t1, settings)).astype(int)
        diffs.append((np.abs(a - b).mean(), plan.shot_at(t0) != plan.shot_at(t1)))
    cuts = [d for d, cut in diffs if cut]
    inside = [d for d, cut in diffs if not cut]
    assert len(cuts) == 3 and min(cuts) > 3 * np.percentile(inside, 90)


def test_texts_are_dense_moving_and_hard_to_read(plans_300):
    texts = [t for p in plans_300 for t in p.texts if t.shot >= 0]
    n = len(texts)
    assert sum(abs(t.dx) > 1 for t in texts) > 0.5 * n  # moving
    assert sum(t.size <= 12 for t in texts) > 0.1 * n  # small
    assert sum(t.blur >= 1.0 for t in texts) > 0.1 * n  # blurred
    width = st.TemporalSettings().width
    cut = [t for t in texts if t.x < 0 or t.x + st._panel_size(t.text, t.font, t.size)[0] > width]
    assert len(cut) > 0.1 * n  # cut by the frame edge
    occluded = sum(len(p.occluders) for p in plans_300)
    assert occluded > len(plans_300)  # objects pass in front of texts
    # redundancy: the key text stays on screen for most of its shot
    for plan in plans_300:
        for key in (t for t in plan.texts if t.key and t.shot >= 0):
            shot = plan.shots[key.shot]
            assert key.end - key.start >= 0.55 * (shot.end - shot.start) - 0.06


def test_hard_negative_families_hold_their_promises(plans_300):
    by_split = defaultdict(list)
    for plan in plans_300:
        by_split[plan.split].append(plan)
    tests = by_split["test"]
    assert 90 <= len(tests) <= 110
    for split in by_split:  # both splits hold every family, >= 15% each
        counts = st.family_counts(plans_300, split)
        assert min(counts.values()) >= 0.15 * sum(counts.values()), (split, counts)
    for plan in plans_300:
        target = (plan.query_text, key_scene(plan))
        # the query's (text, scene) is shown by this video and by no other of its split
        assert target in shown(plan)
        assert not any(target in shown(o) for o in by_split[plan.split] if o is not plan)
        partner = plans_300[plan.partner]
        assert partner.split == plan.split and partner is not plan
        scenes, partner_scenes = {s.scene for s in plan.shots}, {s.scene for s in partner.shots}
        if plan.family == "twin-swap":
            assert partner.partner == plan.index and partner.family == "twin-swap"
            assert scenes == partner_scenes and key_scene(plan) != key_scene(partner)
            assert sorted(t.text for t in plan.texts) == sorted(t.text for t in partner.texts)
            assert partner.query_text == plan.query_text
        elif plan.family == "same-text":
            assert partner.query_text == plan.query_text
            assert key_scene(plan) not in partner_scenes and key_scene(partner) not in scenes
        elif plan.family == "near-miss":
            a, b = plan.query_text, partner.query_text
            assert len(a) == len(b) and 1 <= sum(x != y for x, y in zip(a, b, strict=True)) <= 2
            assert key_scene(plan) == key_scene(partner)
        else:  # overlay: the named text is a persistent overlay, carried by its partner too
            key = next(t for t in plan.texts if t.key)
            assert key.overlay and key.text == plan.query_text
            assert key.start == 0 and key.end == plan.seconds
            assert any(t.overlay and t.text == plan.query_text for t in partner.texts)
    # overlays come from a small pool and are shared by many videos
    carriers = defaultdict(set)
    for plan in plans_300:
        for item in plan.texts:
            if item.overlay:
                carriers[item.text].add(plan.index)
    assert len(carriers) <= len(st.overlay_pool(300))
    assert min(len(v) for v in carriers.values()) >= 2
    assert np.median([len(v) for v in carriers.values()]) >= 10


def test_scenes_are_told_apart_by_the_frame_encoder():
    """On clip-tiny-random: frames of different shots of one video are far apart (mean
    cosine under the simple profile's 0.875 between videos), and a linear probe trained on
    some videos names the scene of every shot of other videos."""
    from pipeline.models import load_vision

    encoder = load_vision("clip-tiny-random")
    settings = st.TemporalSettings()
    plans = st.plan_videos(48, seed=7, settings=settings)
    names = sorted(st.STYLES)
    frames, video, shot, scene = [], [], [], []
    for plan in plans:
        for i, s in enumerate(plan.shots):
            for q in (0.25, 0.75):
                t = round((s.start + q * (s.end - s.start)) * settings.fps) / settings.fps
                frames.append(np.asarray(st.render_frame(plan, t, settings)))
                video.append(plan.index), shot.append(i), scene.append(names.index(s.scene))
    feats = np.concatenate(
        [encoder(np.stack(frames[i : i + 64])) for i in range(0, len(frames), 64)]
    )
    video, shot, scene = np.array(video), np.array(shot), np.array(scene)
    cross = []
    for v in np.unique(video):
        rows = video == v
        sim = feats[rows] @ feats[rows].T
        cross.append(sim[shot[rows][:, None] != shot[rows][None, :]].mean())
    assert np.mean(cross) < 0.875
    train = video < 24  # ridge least squares on one-hot scene labels, tested on other videos
    x = np.hstack([feats, np.ones((len(feats), 1))])
    w = np.linalg.solve(
        x[train].T @ x[train] + 1e-2 * np.eye(x.shape[1]), x[train].T @ np.eye(8)[scene[train]]
    )
    shots = sorted({(v, k) for v, k in zip(video[~train], shot[~train], strict=True)})
    pooled = np.stack([x[(video == v) & (shot == k)].mean(0) for v, k in shots])
    truth = np.array([scene[(video == v) & (shot == k)][0] for v, k in shots])
    assert ((pooled @ w).argmax(1) == truth).mean() >= 0.9
    assert len(set(truth)) == 8


def test_cli_temporal_profile_writes_a_set_tcd_data_textvr_reads(tmp_path):
    runner = CliRunner()
    out, work = tmp_path / "set", tmp_path / "work"
    result = runner.invoke(
        app,
        ["data", "synth", "--profile", "temporal", "--out", str(out), "--videos", "6",
         "--seed", "2", "--workers", "1", "--with-ocr-json", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote 6 videos" in result.output
    result = runner.invoke(app, ["data", "textvr", "--root", str(out), "--work", str(work), "-q"])
    assert result.exit_code == 0, result.output
    dataset = read_textvr(out)
    assert len(dataset.videos) == 6 and set(dataset.split_counts()) == {"train", "test"}
    test_captions = [c.id for c in dataset.captions() if c.split == "test"]
    spec = parse_groups(out / "synth_groups.json")  # what `tcd eval --groups FILE` reads
    assert sorted(e.key for e in spec.entries) == sorted(test_captions)
    assert all(video.ocr_path.exists() for video in dataset.videos)
    # the simple profile stays the default
    result = runner.invoke(app, ["data", "synth", "--help"])
    assert "simple" in result.output and "temporal" in result.output
