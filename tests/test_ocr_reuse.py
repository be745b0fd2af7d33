"""The OCR stage's temporal gate (`ocr.reuse`, pipeline/ocr_reuse.py): what it reuses, what it
must read again, how it keys the cache; and settings added later keeping existing keys."""

from __future__ import annotations

import dataclasses
import json
import re

import cv2
import numpy as np
import pytest

import pipeline.ocr
from cache import SettingsError, settings_key
from cache.keys import ADDED, value_before
from cache.settings import dump_toml, to_dict
from pipeline.ocr import OcrError, make_engine, make_reader, read_lines, run_ocr
from pipeline.ocr_reuse import (
    READ_REASONS,
    BoxGate,
    FrameGate,
    box_change,
    frame_change,
    frame_thumbnail,
    grey,
)
from pipeline.settings import (
    WORK_SETTINGS,
    CaptionSettings,
    OcrSettings,
    PipelineSettings,
    StageGroups,
    resolve_settings,
)
from tests.test_stages import make_work

CAPTIONS = CaptionSettings(frames=4)


def scene(text: str = "", dx: int = 0, extra: str = "") -> np.ndarray:
    """A 384x216 RGB frame: a textured wall, a sign reading `text` shifted by `dx` pixels,
    and, when given, a second small sign `extra` in a corner."""
    rng = np.random.default_rng(0)
    frame = np.full((216, 384, 3), 180, np.uint8)
    frame += rng.integers(0, 20, frame.shape, dtype=np.uint8)
    if text:
        cv2.rectangle(frame, (60 + dx, 80), (330 + dx, 140), (40, 40, 120), -1)
        cv2.putText(frame, text, (75 + dx, 125), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (250,) * 3, 3)
    if extra:
        cv2.rectangle(frame, (10, 10), (110, 40), (20, 90, 20), -1)
        cv2.putText(frame, extra, (16, 33), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (250,) * 3, 2)
    return frame


class CountingEngine:
    """A whole-frame engine that says which frames it was given (one line naming the call)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frames: np.ndarray) -> list[list[tuple[str, float, list]]]:
        box = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
        out = []
        for _ in frames:
            self.calls += 1
            out.append([(f"READ{self.calls}", 0.9, box)])
        return out


# -- settings and keys -----------------------------------------------------------------------
def test_settings_added_later_keep_the_keys_of_existing_caches():
    """An OcrSettings as it was before the gate (and the import engine's settings) existed
    keys exactly as today's settings at the values that ran then (the gate off); the default
    gate keys its own groups."""
    added = {f.name: f for f in dataclasses.fields(OcrSettings) if f.metadata.get(ADDED)}
    gate = {"reuse", "reuse_iou", "reuse_diff", "reuse_frame_diff", "reuse_shift", "reuse_edge"}
    assert gate | {"reuse_frame_texts", "rec_batch"} <= set(added)
    before = dataclasses.make_dataclass(
        "OcrSettings",
        [
            (f.name, f.type, dataclasses.field(default=f.default))
            for f in dataclasses.fields(OcrSettings)
            if f.name not in added
        ],
        frozen=True,
    )
    then = OcrSettings(**{name: value_before(f) for name, f in added.items()})
    assert then.reuse == "off" and settings_key(before()) == settings_key(then)
    assert settings_key(OcrSettings()) != settings_key(then)


def saved_without(tmp_path, ocr: OcrSettings, unknown: tuple[str, ...]) -> PipelineSettings:
    """Save `ocr` as a work dir's settings written before the settings `unknown` existed."""
    saved = PipelineSettings(ocr=ocr)
    text = dump_toml(to_dict(saved)).splitlines(keepends=True)
    (tmp_path / WORK_SETTINGS).write_text("".join(t for t in text if not t.startswith(unknown)))
    return saved


def test_the_gate_bench_ocr_reuse_measures_as_the_default_is_the_default():
    from bench.ocr_reuse import DEFAULT, VARIANTS

    assert dataclasses.replace(OcrSettings(), **VARIANTS[DEFAULT]) == OcrSettings()


def test_a_work_dir_saved_before_the_gate_keeps_its_ungated_ocr(tmp_path):
    """Settings a work dir saved before the gate settings existed read as the gate off, so
    its ocr group is the one it built; turning the gate on there, or a new work dir, gets
    today's box rule."""
    saved = saved_without(tmp_path, OcrSettings(reuse="off"), ("reuse",))
    old = resolve_settings(tmp_path)
    assert old.ocr.reuse == "off"
    assert StageGroups.keys(old)["ocr"] == StageGroups.keys(saved)["ocr"]
    gated = resolve_settings(tmp_path, overrides=["ocr.reuse=frame+boxes"]).ocr
    assert gated == resolve_settings(tmp_path / "new").ocr == OcrSettings()


def test_a_work_dir_gated_before_the_new_box_rule_keeps_its_groups(tmp_path):
    """Saved with a box gate before `reuse_shift`, `reuse_edge` and `reuse_frame_texts`
    existed: it ran the first rule, and keeps that rule and its ocr group."""
    first_rule = OcrSettings(
        reuse="frame+boxes", reuse_shift=0, reuse_edge=False, reuse_frame_texts=False
    )
    saved = saved_without(tmp_path, first_rule, ("reuse_shift", "reuse_edge", "reuse_frame_texts"))
    old = resolve_settings(tmp_path)
    assert old.ocr == first_rule
    assert StageGroups.keys(old)["ocr"] == StageGroups.keys(saved)["ocr"]


def test_paddleocr_runs_the_frame_gate_and_only_its_setting_keys_it():
    """paddleocr reads whole frames: the default "frame+boxes" is "frame" there, and the box
    settings, which it never reads, do not key its group."""
    paddle = {"engine": "paddleocr", "paddle_det_dir": "/d", "paddle_rec_dir": "/r"}
    keys = [
        StageGroups.keys(PipelineSettings(ocr=OcrSettings(**paddle, **gate)))["ocr"]
        for gate in ({}, {"reuse": "frame"}, {"reuse_shift": 2, "reuse_iou": 0.5})
    ]
    assert len(set(keys)) == 1
    frame_diff = OcrSettings(**paddle, reuse_frame_diff=0.1)
    assert StageGroups.keys(PipelineSettings(ocr=frame_diff))["ocr"] != keys[0]


@pytest.mark.parametrize(
    "mode, unread",
    [("off", {"reuse_iou": 0.9, "reuse_diff": 0.3, "reuse_frame_diff": 0.2, "reuse_shift": 2,
              "reuse_edge": False, "reuse_frame_texts": False}),
     ("frame", {"reuse_iou": 0.9, "reuse_diff": 0.3, "reuse_shift": 2, "reuse_edge": False,
                "reuse_frame_texts": False}),
     ("boxes", {"reuse_frame_diff": 0.2, "reuse_frame_texts": False})],
)  # fmt: skip
def test_a_gate_setting_its_mode_does_not_read_leaves_the_key(mode, unread):
    """E.g. `reuse_shift` does not key an ungated group: `reuse = "off"` keeps the groups
    that were built before the gate existed."""
    keys = StageGroups.keys(PipelineSettings(ocr=OcrSettings(reuse=mode)))
    other = StageGroups.keys(PipelineSettings(ocr=OcrSettings(reuse=mode, **unread)))
    assert keys["ocr"] == other["ocr"]


@pytest.mark.parametrize(
    "change",
    [{"reuse": "boxes"}, {"reuse": "frame"}, {"reuse": "off"}, {"reuse_iou": 0.9},
     {"reuse_diff": 0.1}, {"reuse_frame_diff": 0.1}, {"reuse_shift": 0},
     {"reuse_edge": False}, {"reuse_frame_texts": False}, {"rec_batch": 16}],
)  # fmt: skip
def test_a_gate_setting_invalidates_the_ocr_group_and_what_reads_it(change):
    default = StageGroups.keys(PipelineSettings())
    changed = StageGroups.keys(PipelineSettings(ocr=OcrSettings(**change)))
    assert changed["ocr"] != default["ocr"] and changed["captions"] != default["captions"]
    assert changed["frames"] == default["frames"]  # the frames never read OCR


@pytest.mark.parametrize(
    "bad",
    [{"reuse": "sometimes"}, {"reuse_iou": 0}, {"reuse_diff": 2}, {"reuse_shift": -1},
     {"rec_batch": 0}],
)  # fmt: skip
def test_bad_gate_settings_are_refused_by_name(bad):
    with pytest.raises(SettingsError, match=f"ocr.{next(iter(bad))}"):
        OcrSettings(**bad)


# -- "frame" ---------------------------------------------------------------------------------
def test_the_frame_gate_reads_a_frame_only_when_it_changed():
    engine = CountingEngine()
    gate = FrameGate(engine, reuse_frame_diff=0.05)
    same = np.stack([scene("OPEN 24H")] * 3)
    first = gate(same)
    assert engine.calls == 1 and [f[0][0] for f in first] == ["READ1"] * 3
    # a small sign appearing in a corner is a change, though the frame's mean hardly moves
    changed = np.stack([scene("OPEN 24H", extra="EXIT"), scene("OPEN 24H", extra="EXIT")])
    second = gate(changed)
    assert engine.calls == 2 and [f[0][0] for f in second] == ["READ2"] * 2
    gate.start_video()  # a new video never takes the last one's lines
    assert gate(same[:1])[0][0][0] == "READ3"
    assert (gate.counts.frames, gate.counts.frames_read) == (6, 3)


# -- "boxes" ---------------------------------------------------------------------------------
def test_box_change_sees_one_changed_character_but_not_a_small_drift():
    seen = grey(scene("SCORE 12"))
    box = np.array([[60, 80], [330, 80], [330, 140], [60, 140]], float)
    drifted = np.array(box) + [3, 0]
    assert box_change(grey(scene("SCORE 12", dx=3)), seen, drifted) < 0.15
    assert box_change(grey(scene("SCORE 13")), seen, box) > 0.15


def small_sign(text: str, dx: float = 0.0) -> np.ndarray:
    """A 384x216 RGB frame with a sign of 12-px text (drawn at 4x and area-downscaled, so a
    fractional `dx` moves it by a fraction of a pixel), and codec-like noise."""
    scale, rng = 4, np.random.default_rng(0)
    frame = np.full((216 * scale, 384 * scale, 3), 180, np.uint8)
    x = round((60 + dx) * scale)
    cv2.rectangle(frame, (x, 80 * scale), (x + 120 * scale, 100 * scale), (40, 40, 120), -1)
    cv2.putText(
        frame, text, (x + 6 * scale, 96 * scale), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
        (250,) * 3, scale, cv2.LINE_AA,
    )  # fmt: skip
    frame = cv2.resize(frame, (384, 216), interpolation=cv2.INTER_AREA)
    return frame + rng.integers(0, 6, frame.shape, dtype=np.uint8)


SMALL_BOX = np.array([[60, 80], [180, 80], [180, 100], [60, 100]], float)


def test_a_patch_shift_absorbs_glyphs_landing_on_the_grid_one_by_one_but_no_changed_character():
    """A text drifting by a fraction of a pixel moves some glyphs by a pixel and not others:
    one alignment of the crop sees a change, `shift` = 1 does not; a changed digit of
    small text differs at every offset, drifted or not."""
    seen = grey(small_sign("SCORE 12"))
    for column in (100, 110, 120):  # the glyphs right of it moved by one pixel
        moved = seen.copy()
        moved[:, column + 1 :] = seen[:, column:-1]
        assert box_change(moved, seen, SMALL_BOX) > 0.15
        assert box_change(moved, seen, SMALL_BOX, shift=1) < 0.15
    for before, after in [("SCORE 12", "SCORE 13"), ("LAP 6", "LAP 8"), ("10:42", "10:43")]:
        seen = grey(small_sign(before))
        for dx in (0.0, 0.5, 1.25):
            changed = grey(small_sign(after, dx))
            assert box_change(changed, seen, SMALL_BOX + [dx, 0], shift=1) > 0.15, (after, dx)


def sliding_in(dx: int) -> np.ndarray:
    """A 384x216 RGB frame whose sign, cut by the left edge, has slid `dx` pixels in."""
    frame = np.full((216, 384, 3), 180, np.uint8)
    cv2.rectangle(frame, (-200 + dx, 80), (150 + dx, 120), (40, 40, 120), -1)
    cv2.putText(
        frame, "WELCOME TO SUMMER FEST", (-190 + dx, 110), cv2.FONT_HERSHEY_SIMPLEX, 0.9,
        (250,) * 3, 2,
    )  # fmt: skip
    return frame


def sliding_box(dx: int) -> np.ndarray:
    return np.array([[0, 80], [150 + dx, 80], [150 + dx, 120], [0, 120]], float)


def test_at_the_frame_edge_a_text_sliding_in_is_a_change_and_a_text_cut_still_is_not():
    """A sign cut by the frame's left edge slides in: the inset crop sees only the text that
    was there and matches it; compared up to the edge (`edge`) it differs."""
    seen = grey(sliding_in(0))
    for dx in (0, 3, 10):
        current, box = grey(sliding_in(dx)), sliding_box(dx)
        assert box_change(current, seen, box) < 0.15  # the rule without `edge` reuses it
        assert (box_change(current, seen, box, edge=True) > 0.15) == (dx > 0)
        # the same sign sliding out at the right edge
        mirrored = box.copy()
        mirrored[:, 0] = 384 - box[:, 0]
        out, then = np.fliplr(current).copy(), np.fliplr(seen).copy()
        assert (box_change(out, then, mirrored, edge=True) > 0.15) == (dx > 0)


@pytest.fixture(scope="module")
def rapidocr() -> pipeline.ocr.RapidOcrEngine:
    return make_engine(OcrSettings())


def texts(found: list[list[tuple[str, float, list]]]) -> list[list[str]]:
    return [sorted(text for text, _, _ in frame) for frame in found]


def test_the_box_gate_reads_what_changed_and_reuses_what_did_not(rapidocr):
    frames = np.stack(
        [scene("SCORE 12"), scene("SCORE 12", dx=2), scene("SCORE 13", dx=2), scene("SCORE 13")]
    )
    gate = BoxGate(rapidocr, reuse_iou=0.7, reuse_diff=0.15)
    gated = gate(frames)
    assert texts(gated) == texts(rapidocr(frames))  # the same lines as reading every frame
    assert texts(gated)[0] == ["SCORE 12"] and texts(gated)[2] == ["SCORE 13"]
    # the drifted frame 1 and the unchanged frame 3 reuse their box: 2 of 4 recognised,
    # the first as new (no previous frame), the third because its crop changed
    assert (gate.counts.boxes, gate.counts.boxes_read) == (4, 2)
    assert gate.counts.read_because == {"new": 1, "changed": 1, "grown": 0, "dropped": 0}


def fading(brightness: int) -> np.ndarray:
    """The sign of `scene`, its letters at grey level `brightness`."""
    frame = scene()
    cv2.rectangle(frame, (60, 80), (330, 140), (40, 40, 120), -1)
    cv2.putText(frame, "SCORE 12", (75, 125), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (brightness,) * 3, 3)
    return frame


def test_a_box_is_compared_with_the_frame_where_its_text_was_read(rapidocr):
    """Letters fading in steps that are each below reuse_diff add up: against the frame of
    recognition the change shows, so the box is read again rather than carried forever."""
    box = np.array([[60, 80], [330, 80], [330, 140], [60, 140]], float)
    steps = [grey(fading(b)) for b in (250, 220, 190)]
    assert box_change(steps[1], steps[0], box) < 0.15 and box_change(steps[2], steps[1], box) < 0.15
    assert box_change(steps[2], steps[0], box) > 0.15
    gate = BoxGate(rapidocr, reuse_iou=0.7, reuse_diff=0.15)
    gate(np.stack([fading(b) for b in (250, 220, 190)]))
    assert gate.counts.boxes_read == 2  # frame 0, and frame 2 (changed since frame 0)


class SplitEngine:
    """An engine in two halves that counts its calls: one box per frame, read as 'SIGN'."""

    def __init__(self) -> None:
        self.detected = self.recognised = 0

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        self.detected += 1
        box = np.array([[60, 80], [330, 80], [330, 140], [60, 140]], float)
        return box[None], [frame[80:140, 60:330]]

    def recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        self.recognised += len(crops)
        return [("SIGN", 0.9)] * len(crops)


class Sliding(SplitEngine):
    """Detects the sign of `sliding_in`, 3 px further in each frame."""

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        box = sliding_box(3 * self.detected)
        self.detected += 1
        return box[None], [frame[80:120, 0 : int(box[1, 0])]]


@pytest.mark.parametrize("edge", [False, True])
def test_the_gate_built_from_settings_compares_up_to_the_edge_when_asked(monkeypatch, edge):
    monkeypatch.setattr(pipeline.ocr, "make_engine", lambda settings, threads=1: Sliding())
    gate = make_reader(OcrSettings(reuse="boxes", reuse_shift=1, reuse_edge=edge))
    gate(np.stack([sliding_in(3 * k) for k in range(3)]))
    assert gate.counts.boxes_read == (3 if edge else 1)


def test_frame_plus_boxes_skips_the_detector_on_unchanged_frames():
    engine = SplitEngine()
    gate = BoxGate(engine, reuse_iou=0.7, reuse_diff=0.15, reuse_frame_diff=0.05)
    frames = np.stack([scene("SIGN")] * 3 + [scene("SIGN", extra="EXIT")])
    assert texts(gate(frames)) == [["SIGN"]] * 4
    # frame 0 detected and recognised; 1-2 unchanged; 3 changed: detected, its box reused
    assert (engine.detected, engine.recognised) == (2, 1)
    assert (gate.counts.frames_read, gate.counts.boxes, gate.counts.boxes_read) == (2, 4, 1)
    plain = SplitEngine()
    BoxGate(plain, reuse_iou=0.7, reuse_diff=0.15)(frames)
    assert plain.detected == 4  # "boxes" alone detects every frame


class FadingIn(SplitEngine):
    """The first crop it reads is dropped (no text over the score), as a sign fading in."""

    def recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        first = self.recognised == 0
        read = super().recognize(crops)
        return [("", 0.0)] + read[1:] if first else read


class SmallSign(SplitEngine):
    """Detects the 12-px sign of `small_sign` and reads it as a new text each time."""

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        self.detected += 1
        return SMALL_BOX[None], [frame[80:100, 60:180]]

    def recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        self.recognised += len(crops)
        return [(f"READ{self.recognised - k}", 0.9) for k in range(len(crops))][::-1]


@pytest.mark.parametrize("check_texts", [False, True])
def test_frame_plus_boxes_sees_a_changed_digit_the_thumbnail_cannot(check_texts):
    """A digit of a 12-px sign changes a thumbnail block by 0.003, far under reuse_frame_diff:
    without `reuse_frame_texts` the frame skips the detector and keeps the old score; with
    it, the box test sees the digit, and the frame is detected and read again."""
    engine = SmallSign()
    gate = BoxGate(engine, 0.7, 0.15, 0.05, reuse_shift=1, reuse_frame_texts=check_texts)
    frames = np.stack([small_sign("SCORE 12"), small_sign("SCORE 12"), small_sign("SCORE 13")])
    thumbs = [frame_thumbnail(grey(f)) for f in frames[1:]]
    assert frame_change(*thumbs) < 0.005  # README's 0.003: the thumbnail cannot see it
    read = texts(gate(frames))
    assert read[:2] == [["READ1"], ["READ1"]] and engine.detected == 1 + check_texts
    assert read[2] == (["READ2"] if check_texts else ["READ1"])


def test_a_dropped_read_is_never_reused():
    engine = FadingIn()
    gate = BoxGate(engine, reuse_iou=0.7, reuse_diff=0.15)
    same = np.stack([scene("SIGN")] * 3)
    # frame 0's read is dropped: frames 1 and 2, which continue it, are read after all
    assert texts(gate(same)) == [[], ["SIGN"], ["SIGN"]]
    assert gate(same[:1]) and engine.recognised == 3  # the next batch reuses a read text
    assert gate.counts.read_because == {"new": 1, "changed": 0, "grown": 0, "dropped": 2}


class Growing(SplitEngine):
    """Detects one box per frame whose right edge is the frame's `right` (a text scrolling in
    from the right grows by a character: ~15 px at this 30 px height)."""

    def __init__(self, rights: list[int]) -> None:
        super().__init__()
        self.rights = iter(rights)

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        self.detected += 1
        right = next(self.rights)
        box = np.array([[60, 95], [right, 95], [right, 125], [60, 125]], float)
        return box[None], [frame[95:125, 60:right]]


def test_a_box_that_grew_by_a_character_is_read_again():
    # the same pixels inside the box: only its extent says that a character came in
    frames = np.stack([scene("SIGN")] * 3)
    engine = Growing([300, 303, 320])  # 3 px: detector jitter; 17 px more: a character
    gate = BoxGate(engine, reuse_iou=0.7, reuse_diff=0.15)
    gate(frames)
    assert engine.recognised == 2 and gate.counts.boxes_read == 2
    assert gate.counts.read_because == {"new": 1, "changed": 0, "grown": 1, "dropped": 0}


def test_boxes_needs_an_engine_with_detection_and_recognition(monkeypatch):
    """A whole-frame engine (paddleocr) has no box gate: "boxes" is refused, and the default
    "frame+boxes" is the frame gate there, so the default works with every engine."""
    monkeypatch.setattr(pipeline.ocr, "make_engine", lambda settings, threads=1: CountingEngine())
    with pytest.raises(OcrError, match=re.escape('"boxes" needs an engine')):
        make_reader(OcrSettings(reuse="boxes"))
    for mode in ("frame", "frame+boxes"):
        assert isinstance(make_reader(OcrSettings(reuse=mode)), FrameGate)


# -- the stage ------------------------------------------------------------------------------
def test_a_gated_stage_keeps_the_key_texts_in_its_own_group(synth_set, tmp_path):
    """The real engine, gated and not, on the 12 synthetic videos (T = 4, 0.5 OCR frames/s):
    each writes its own group, the gate reports what it read, and every key text the ungated
    run found, the gated run found too."""
    work = make_work(synth_set, tmp_path)
    meta = {
        v["path"]: v["key_text"]
        for v in json.loads((synth_set / "synth_meta.json").read_text())["videos"]
    }  # noqa: E501
    paths = work.manifest.videos.column("path")
    found = {}
    for reuse in ("off", "boxes"):
        ocr = OcrSettings(fps=0.5, reuse=reuse)
        report = run_ocr(work, ocr, progress=False, captions=CAPTIONS)
        assert report.computed == len(paths) and report.failed == 0
        group = StageGroups.resolve(work, PipelineSettings(ocr=ocr, captions=CAPTIONS)).ocr
        found[reuse] = {
            row: {line["text"] for line in read_lines(group, row)} for row in range(len(paths))
        }
        if reuse == "boxes":
            figures = report.figures
            assert 0 < figures["boxes_read_share"] < 1
            why = sum(figures[f"boxes_read_{reason}_share"] for reason in READ_REASONS)
            assert why == pytest.approx(figures["boxes_read_share"])  # every read has a reason
    keys = {row: meta[next(p for p in meta if str(paths[row]).endswith(p))] for row in found["off"]}
    read_off = {row for row, key in keys.items() if key in found["off"][row]}
    read_gated = {row for row, key in keys.items() if key in found["boxes"][row]}
    assert read_off and read_off <= read_gated
