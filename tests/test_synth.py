"""The synthetic generator: layout, determinism, the hard negatives it promises."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import numpy as np
import pytest

from pipeline.datasets import read_textvr, textvr_rand_columns
from pipeline.synth import SCENES, SynthSettings, generate, plan_videos, render_frame
from pipeline.video import probe
from tests.conftest import FAST_SYNTH


def digest_tree(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_reads_as_textvr(synth_set):
    dataset = read_textvr(synth_set)
    meta = json.loads((synth_set / "synth_meta.json").read_text())
    assert len(dataset.videos) == 12
    assert set(dataset.split_counts()) <= {"train", "test"}
    for video, truth in zip(
        sorted(dataset.videos, key=lambda v: v.id),
        sorted(meta["videos"], key=lambda v: v["path"]),
        strict=True,
    ):
        info = probe(video.path)
        assert 3.0 <= info.duration <= 8.0 + 0.2
        assert info.width >= 320 and info.height >= 180 and info.fps >= 10
        assert video.domain == SCENES[truth["scene"]]["domain"]
        assert video.ocr_path.exists()
        for caption in video.captions:  # every query names the key text and the scene
            assert truth["key_text"] in caption
            assert any(phrase in caption for phrase in SCENES[truth["scene"]]["phrases"])
        if video.split == "train":
            assert len(video.captions) >= 2
    if dataset.split_counts().get("test", 0) > 1:
        cols = textvr_rand_columns(
            synth_set / "TextVR_test.json", synth_set / "TextVR_test_rand.json"
        )
        assert sorted(cols) == list(range(len(cols)))


def test_generator_is_deterministic_per_seed(tmp_path):
    settings = SynthSettings(min_seconds=3.0, max_seconds=3.0)
    generate(tmp_path / "a", 3, seed=11, settings=settings, progress=False, with_ocr_json=True)
    generate(tmp_path / "b", 3, seed=11, settings=settings, progress=False, with_ocr_json=True)
    generate(tmp_path / "c", 3, seed=12, settings=settings, progress=False, with_ocr_json=True)
    a, b, c = (digest_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a != c


def test_plans_contain_the_promised_hard_negatives():
    plans = plan_videos(300, seed=0, settings=SynthSettings())
    by_text = defaultdict(list)
    for plan in plans:
        by_text[plan.key_text].append(plan)
    shared = [group for group in by_text.values() if len(group) > 1]
    # same text, different scene, same split (so both sit in one retrieval gallery)
    assert len(shared) >= 30
    assert all(
        len({p.scene for p in g}) == len(g) and len({p.split for p in g}) == 1 for g in shared
    )
    # same scene, different text: every scene holds many videos
    scenes = defaultdict(int)
    for plan in plans:
        scenes[plan.scene] += 1
    assert len(scenes) == 4 and min(scenes.values()) >= 40
    # key text visible in only part of the video; distractors that are other videos' key texts
    fractions = [(k.end - k.start) / p.seconds for p in plans for k in p.texts if k.key]
    assert sum(f < 0.5 for f in fractions) >= 0.2 * len(plans)
    key_texts = {p.key_text for p in plans}
    misleading = [t for p in plans for t in p.texts if not t.key and t.text in key_texts]
    assert len(misleading) >= 30
    tests = sum(p.split == "test" for p in plans)
    assert 75 <= tests <= 125


def test_texts_stay_in_frame_and_do_not_overlap():
    settings = SynthSettings()
    for plan in plan_videos(60, seed=5, settings=settings):
        from pipeline.synth import _text_box

        for t in np.arange(0, plan.seconds, 0.5):
            boxes = [_text_box(x, t)[:4] for x in plan.texts if x.start <= t <= x.end]
            for x0, y0, x1, y1 in boxes:
                assert (
                    -1 <= x0 and x1 <= settings.width + 1 and -1 <= y0 and y1 <= settings.height + 1
                )
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    assert a[3] <= b[1] or b[3] <= a[1], f"overlap in video {plan.index}"


def test_key_text_changes_the_pixels_only_while_visible(synth_set):
    plan = plan_videos(12, seed=3, settings=FAST_SYNTH)[0]
    key = next(x for x in plan.texts if x.key)
    # render the same moment with and without the key text
    t = (key.start + key.end) / 2
    with_text = np.asarray(render_frame(plan, t, FAST_SYNTH)).astype(int)
    plan.texts = [x for x in plan.texts if not x.key]
    without = np.asarray(render_frame(plan, t, FAST_SYNTH)).astype(int)
    assert np.abs(with_text - without).sum() > 0
    if key.end + 0.2 < plan.seconds:
        plan.texts.append(key)
        after = np.asarray(render_frame(plan, key.end + 0.1, FAST_SYNTH)).astype(int)
        plan.texts.pop()
        blank = np.asarray(render_frame(plan, key.end + 0.1, FAST_SYNTH)).astype(int)
        assert np.array_equal(after, blank)


def test_ocr_json_tracks_match_the_plan(synth_set):
    meta = json.loads((synth_set / "synth_meta.json").read_text())
    for video in meta["videos"]:
        ocr = json.loads(
            (synth_set / "Kwai_VideoOCR" / video["path"].replace(".mp4", ".json")).read_text()
        )
        texts = {track["text"] for track in ocr.values()}
        assert video["key_text"] in texts
        key = next(t for t in video["texts"] if t["key"])
        track = next(tr for tr in ocr.values() if tr["text"] == video["key_text"])
        frames = sorted(int(f) for f in track["tracks"])
        fps = meta["settings"]["fps"]
        assert frames[0] / fps >= key["start"] - 1e-6 and frames[-1] / fps <= key["end"] + 1e-6
        assert all(len(v) == 10 for v in track["tracks"].values())


def test_a_video_write_that_fails_leaves_no_partial_file(tmp_path, monkeypatch):
    import pipeline.synth as synth

    frames = []

    def killed_at_frame_20(*args, **kwargs):
        frames.append(1)
        if len(frames) == 20:  # some frames are written by then
            raise KeyboardInterrupt  # as if the generator were stopped mid-video
        return render_frame(*args, **kwargs)

    plan = plan_videos(2, 0, FAST_SYNTH)[0]
    monkeypatch.setattr(synth, "render_frame", killed_at_frame_20)
    with pytest.raises(KeyboardInterrupt):
        synth.write_video(plan, tmp_path / "v.mp4", FAST_SYNTH)
    assert list(tmp_path.iterdir()) == []  # no v.mp4, no temporary file beside it
