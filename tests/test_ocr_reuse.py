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
    changed_mask,
    changed_regions,
    frame_change,
    frame_thumbnail,
    grey,
    on_inner_edge,
    under_box,
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
ADDED_BEFORE = {f.name: value_before(f) for f in dataclasses.fields(OcrSettings)}


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
    assert gate | {"reuse_frame_texts", "reuse_regions", "rec_batch"} <= set(added)
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


RULES_SINCE = ("reuse_shift", "reuse_edge", "reuse_frame_texts", "reuse_regions", "reuse_block_px")


@pytest.mark.parametrize("unknown", [RULES_SINCE, RULES_SINCE[-2:], RULES_SINCE[-1:]])
def test_a_work_dir_gated_before_the_new_box_rule_keeps_its_groups(tmp_path, unknown):
    """Saved with a box gate before `reuse_shift`, `reuse_edge`, `reuse_frame_texts` (or
    only `reuse_regions`, `reuse_block_px`) existed: it ran the rule of then, and keeps it and
    its ocr group."""
    then = OcrSettings(reuse="frame+boxes", **{name: ADDED_BEFORE[name] for name in unknown})
    saved = saved_without(tmp_path, then, unknown)
    old = resolve_settings(tmp_path)
    assert old.ocr == then != OcrSettings()
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
              "reuse_edge": False, "reuse_frame_texts": False, "reuse_regions": False}),
     ("frame", {"reuse_iou": 0.9, "reuse_diff": 0.3, "reuse_shift": 2, "reuse_edge": False,
                "reuse_frame_texts": False, "reuse_regions": False}),
     ("boxes", {"reuse_frame_diff": 0.2, "reuse_frame_texts": False, "reuse_regions": False})],
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
     {"reuse_edge": False}, {"reuse_frame_texts": False}, {"reuse_regions": False},
     {"rec_batch": 16}],
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

    def crop(self, frame: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        """The boxes' upright crops (what `detect` cuts for its one box)."""
        return [frame[int(b[0, 1]) : int(b[2, 1]), int(b[0, 0]) : int(b[1, 0])] for b in boxes]


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


class RegionalSmallSign(SmallSign):
    """`SmallSign` detecting in regions: the sign only where a region holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list = []

    def detects_in_place(self, shape: tuple[int, ...]) -> bool:
        return True

    def detect(self, frame: np.ndarray, regions=None) -> tuple[np.ndarray, list[np.ndarray]]:
        self.asked.append(regions)
        boxes, crops = super().detect(frame)
        inside = regions is None or any(
            x0 <= 60 and y0 <= 80 and 180 <= x1 and 100 <= y1 for x0, y0, x1, y1 in regions
        )
        return (boxes, crops) if inside else (np.zeros((0, 4, 2)), [])


@pytest.mark.parametrize("check_texts", [False, True])
def test_frame_plus_boxes_sees_a_changed_digit_the_thumbnail_cannot(check_texts):
    """A digit of a 12-px sign changes a thumbnail block by 0.003, far under reuse_frame_diff:
    without `reuse_frame_texts` the frame skips the detector and keeps the old score; with
    it, the box test sees the digit, and the frame is detected and read again."""
    engine = SmallSign()
    gate = BoxGate(engine, 0.7, 0.15, 0.05, reuse_shift=1, reuse_frame_texts=check_texts)
    frames = np.stack([small_sign("SCORE 12"), small_sign("SCORE 12"), small_sign("SCORE 13")])
    thumbs = [frame_thumbnail(grey(f), 48) for f in frames[1:]]
    assert frame_change(*thumbs) < 0.005  # README's 0.003: the thumbnail cannot see it
    read = texts(gate(frames))
    assert read[:2] == [["READ1"], ["READ1"]] and engine.detected == 1 + check_texts
    assert read[2] == (["READ2"] if check_texts else ["READ1"])


def subtitle_frames(width: int, height: int) -> np.ndarray:
    """Two frames of a smooth gradient, the second with a 40-pixel-high subtitle in an empty
    part of the picture (a phone video's caption appearing)."""
    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :, None]
    bg = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8).copy()
    shown = bg.copy()
    cv2.putText(shown, "TESCO express", (width // 3, height - 120), 0, 1.5, (250,) * 3, 3)
    return np.stack([bg, shown])


@pytest.mark.parametrize("size", [(1920, 1080), (1080, 1920)])
def test_a_subtitle_appearing_in_an_hd_frame_is_read(size):
    """In a 1080p frame a block of the fixed 64x36 thumbnail is 240 pixels wide: a subtitle
    appearing in an empty part moves no block past reuse_frame_diff, and the frame gate kept
    the frame before's (no) lines. Blocks of 48 frame pixels see it, in portrait too."""
    frames = subtitle_frames(*size)
    for block_px, reads in ((0, 1), (48, 2)):
        thumbs = [frame_thumbnail(grey(f), block_px) for f in frames]
        engine = CountingEngine()
        FrameGate(engine, 0.05, block_px)(frames)
        assert engine.calls == reads, (block_px, frame_change(*thumbs))
    small = [scene("OPEN"), scene("SHUT")]  # 384x216: the same thumbnail either way
    for f in small:
        np.testing.assert_array_equal(frame_thumbnail(grey(f), 48), frame_thumbnail(grey(f), 0))


# -- "frame+boxes" with reuse_regions ------------------------------------------------------
def test_the_detector_on_a_region_sees_what_it_sees_on_the_whole_frame(rapidocr):
    """A region is detected at the whole frame's scale: the whole frame as one region is
    the whole-frame call exactly, and a region around one sign finds that sign alone, its
    box within a few pixels (the detector's map depends a little on the context it sees)."""
    frame = scene("SCORE 12", extra="EXIT")
    boxes, crops = rapidocr.detect(frame)
    assert len(boxes) == 2
    same, same_crops = rapidocr.detect(frame, [(0, 0, 384, 216)])
    assert np.array_equal(same, boxes) and rapidocr.recognize(same_crops) == rapidocr.recognize(
        crops
    )
    corner, corner_crops = rapidocr.detect(frame, [(0, 0, 140, 60)])
    assert len(corner) == 1 and np.abs(corner[0] - boxes[0]).max() <= 3  # less context
    assert rapidocr.recognize(corner_crops)[0][0] == "EXIT"


def test_regions_detect_only_what_changed_and_keep_the_other_boxes(rapidocr):
    """A small sign appearing in a corner: the detector runs on the corner only, the big
    sign keeps its box and text unread, and every frame reads as reading it whole does."""
    frames = np.stack(
        [scene("SCORE 12"), scene("SCORE 12", extra="EXIT"), scene("SCORE 12", extra="EXIT")]
    )
    asked = []
    detect = rapidocr.detect

    def recording(frame, regions=None):
        asked.append(regions)
        return detect(frame, regions)

    engine = SplitEngine()
    engine.detect, engine.recognize = recording, rapidocr.recognize  # type: ignore[method-assign]
    engine.detects_in_place = rapidocr.detects_in_place  # type: ignore[attr-defined]
    gate = BoxGate(engine, 0.7, 0.15, 0.05, 1, True, True, reuse_regions=True)
    assert texts(gate(frames)) == texts(rapidocr(frames))
    assert asked[0] is None and len(asked) == 2  # frame 2 is unchanged: not detected
    ((x0, y0, x1, y1),) = asked[1]
    (big,) = rapidocr.detect(frames[0])[0]
    assert y1 <= big[:, 1].min() and (x1 - x0) * (y1 - y0) < 384 * 216 / 4  # a corner
    assert (gate.counts.boxes_read, gate.counts.frames_regional) == (2, 1)
    assert gate.counts.area_detected < 1.2  # the whole first frame and a corner


@pytest.mark.parametrize("cut", [165, 205, 223, 247])
def test_a_region_cutting_a_text_finds_a_box_on_its_side(rapidocr, cut):
    """Wherever a region's side cuts the sign (in a letter, at the word gap), a box reaches
    that side, so the gate sends the frame to the detector whole rather than keep a cut
    text ("SCOF", "SCORE")."""
    frame, region = scene("SCORE 12"), (0, 60, cut, 160)
    boxes, _ = rapidocr.detect(frame, [region])
    assert any(on_inner_edge(box, [region], frame.shape) for box in boxes)


def flicker_and_sign(k: int, text: str = "") -> np.ndarray:
    """A grey frame whose top-left square flips black and white each frame, and a small
    thin `text` at the bottom right (its thumbnail blocks change by about 0.02 when it
    appears: under reuse_frame_diff)."""
    frame = np.full((216, 384, 3), 120, np.uint8)
    frame[:60, :60] = 255 * (k % 2)
    if text:
        cv2.putText(frame, text, (250, 200), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (250,) * 3, 1)
    return frame


def test_a_small_text_appearing_beside_a_larger_change_is_found_late_not_never(rapidocr):
    """Regions look only where blocks changed over reuse_frame_diff, so a thin text appearing
    beside the flipping square is not in them; once the regions add up to a whole frame's
    area the detector runs on a whole frame again, and finds it there, for good."""
    frames = np.stack([flicker_and_sign(0)] + [flicker_and_sign(k, "EXIT 4") for k in range(1, 16)])
    assert texts(rapidocr(frames)) == [[]] + [["EXIT 4"]] * 15
    engine = Looking()
    engine.detect = lambda frame, regions=None: (  # type: ignore[method-assign]
        engine.asked.append(regions) or rapidocr.detect(frame, regions)
    )
    engine.recognize = rapidocr.recognize  # type: ignore[method-assign]
    gate = BoxGate(engine, 0.7, 0.15, 0.05, 1, True, True, reuse_regions=True)
    found = [bool(frame) for frame in texts(gate(frames))]
    first = found.index(True)
    refresh = next(k for k, regions in enumerate(engine.asked[1:], 1) if regions is None)
    assert 1 < first < len(frames) - 1 and all(found[first:]) and not any(found[:first])
    regional = engine.asked[1:refresh]
    area = sum((x1 - x0) * (y1 - y0) for r in regional for x0, y0, x1, y1 in r) / (384 * 216)
    assert regional and area < 1.0  # regions alone until they would make a whole frame


class Looking(SplitEngine):
    """Detects nothing, or, with `at_edge`, one box filling each region it is given; and
    records where it was asked to look (None: the whole frame). `in_place`: whether it
    detects frames in place (rapidocr shrinks frames over 2000 pixels)."""

    def __init__(self, at_edge: bool = False, in_place: bool = True) -> None:
        super().__init__()
        self.asked: list = []
        self.at_edge, self.in_place = at_edge, in_place

    def detects_in_place(self, shape: tuple[int, ...]) -> bool:
        return self.in_place

    def detect(self, frame: np.ndarray, regions=None) -> tuple[np.ndarray, list[np.ndarray]]:
        self.detected += 1
        self.asked.append(regions)
        if not (self.at_edge and regions):
            return np.zeros((0, 4, 2)), []
        boxes = [[[x0, y0], [x1, y0], [x1, y1], [x0, y1]] for x0, y0, x1, y1 in regions]
        return np.array(boxes, float), [frame[y0:y1, x0:x1] for x0, y0, x1, y1 in regions]


def flicker_and_dawn(k: int) -> np.ndarray:
    """A grey frame with a square at the top left flipping black and white each frame, and
    one at the bottom right brightening by 6 grey levels a frame (0.024: each step under
    reuse_frame_diff, three of them over it)."""
    frame = np.full((216, 384, 3), 100, np.uint8)
    frame[:60, :60] = 255 * (k % 2)
    frame[150:210, 300:360] = 100 + 6 * k
    return frame


def test_a_slow_change_beside_a_fast_one_adds_up_until_it_is_detected():
    """What the detector saw is the reference, region by region: the slow square is compared
    with the frame the detector last ran on there, so its steps add up and it is detected
    once they exceed reuse_frame_diff, though each frame alone changes it by less."""
    engine = Looking()
    gate = BoxGate(engine, 0.7, 0.15, 0.05, reuse_regions=True)
    gate(np.stack([flicker_and_dawn(k) for k in range(4)]))
    assert engine.asked[0] is None
    slow = [any(x1 > 300 and y1 > 150 for x0, y0, x1, y1 in r) for r in engine.asked[1:]]
    assert slow == [False, False, True]  # 0.024, 0.047, then 0.071 since frame 0
    assert all(any(x0 == 0 and y0 == 0 for x0, y0, _, _ in r) for r in engine.asked[1:])


def test_a_box_reaching_a_regions_inner_side_sends_the_frame_to_the_detector_whole():
    """...which then is the reference everywhere: the same frame again is not detected."""
    engine = Looking(at_edge=True)
    gate = BoxGate(engine, 0.7, 0.15, 0.05, reuse_regions=True)
    gate(np.stack([flicker_and_dawn(0), flicker_and_dawn(1), flicker_and_dawn(1)]))
    assert engine.asked[0] is None and engine.asked[1] and engine.asked[2] is None
    assert len(engine.asked) == 3 and gate.counts.frames_regional == 0
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in engine.asked[1]) / (384 * 216)
    assert gate.counts.area_detected == pytest.approx(2 + area)


def test_a_frame_the_engine_would_rescale_is_detected_whole():
    engine = Looking(in_place=False)
    BoxGate(engine, 0.7, 0.15, 0.05, reuse_regions=True)(
        np.stack([flicker_and_dawn(k) for k in range(3)])
    )
    assert engine.asked == [None, None, None]


def test_the_changed_mask_is_the_changed_blocks_and_one_pixel_more():
    """One thumbnail pixel changed by 1.0 moves the mean of each 8x8 block holding it by
    1/64: at a threshold under that, the blocks holding it are rows 13-27 and columns 23-37
    (every block that covers row 20, column 30), and the mask one pixel more."""
    last, thumb = np.zeros((36, 64), np.float32), np.zeros((36, 64), np.float32)
    thumb[20, 30] = 1.0
    rows, cols = np.nonzero(changed_mask(thumb, last, 0.01))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 28, 22, 38)
    assert not changed_mask(thumb, last, 0.02).any()


def test_changed_regions_take_whole_every_box_they_reach_even_through_another():
    """Two lines of one sign, 4 px apart: a change inside the lower one reaches the upper one
    only once the lower box is taken whole, and then the upper one is taken whole too."""
    upper = np.array([[40, 42], [200, 42], [200, 62], [40, 62]], float)
    lower = np.array([[40, 66], [200, 66], [200, 120], [40, 120]], float)
    changed = np.zeros((36, 64), bool)
    changed[14:18, 10:20] = True  # inside the lower box (rows 11-20 of the thumbnail)
    shape = (216, 384)
    ((x0, y0, x1, y1),) = changed_regions(changed, [upper, lower], shape)
    for box in (upper, lower):
        rows, cols = under_box(box, shape, changed.shape)
        assert y0 <= rows.start and rows.stop <= y1 and x0 <= cols.start and cols.stop <= x1


def test_with_regions_the_box_test_still_sees_a_changed_digit():
    """The changed digit of a 12-px sign moves no thumbnail block: with regions, the box test
    marks the sign, which is detected (alone) and read again."""
    engine = RegionalSmallSign()
    gate = BoxGate(engine, 0.7, 0.15, 0.05, 1, True, True, reuse_regions=True)
    frames = np.stack([small_sign("SCORE 12"), small_sign("SCORE 12"), small_sign("SCORE 13")])
    assert texts(gate(frames)) == [["READ1"], ["READ1"], ["READ2"]]
    assert engine.asked[0] is None and len(engine.asked) == 2
    ((x0, y0, x1, y1),) = engine.asked[1]
    assert (x0, y0) <= (60, 80) and (x1, y1) >= (180, 100) and (x1 - x0) * (y1 - y0) < 384 * 54


def test_a_dropped_read_is_never_reused():
    engine = FadingIn()
    gate = BoxGate(engine, reuse_iou=0.7, reuse_diff=0.15)
    same = np.stack([scene("SIGN")] * 3)
    # frame 0's read is dropped: frames 1 and 2, which continue it, are read after all
    assert texts(gate(same)) == [[], ["SIGN"], ["SIGN"]]
    assert gate(same[:1]) and engine.recognised == 3  # the next batch reuses a read text
    assert gate.counts.read_because == {"new": 1, "changed": 0, "grown": 0, "dropped": 2}


class BrightOnly(SplitEngine):
    """Reads 'SIGN' only where its letters are bright (a sign fading in is dropped at first);
    detects in place, so "frame+boxes" may take regions."""

    def detects_in_place(self, shape: tuple[int, ...]) -> bool:
        return True

    def detect(self, frame: np.ndarray, regions=None) -> tuple[np.ndarray, list[np.ndarray]]:
        return super().detect(frame)

    def recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        self.recognised += len(crops)
        return [("SIGN", 0.9) if grey(c).max() >= 240 else ("", 0.0) for c in crops]


def ungated(frames: np.ndarray) -> list[list[str]]:
    return [["SIGN"] if grey(f[80:140, 60:330]).max() >= 240 else [] for f in frames]


def test_rapidocr_cuts_a_carried_box_as_its_detector_cut_it(rapidocr):
    # in place (the frame as it is) the crops are the detector's; on a frame rapidocr shrinks
    # the box is mapped back onto the shrunk image, within a pixel
    for size in [(216, 384), (2000, 3000)]:
        frame = cv2.resize(scene("SIGN", extra="EXIT"), size[::-1])
        boxes, crops = rapidocr.detect(frame)
        again = rapidocr.crop(frame, boxes)
        sizes = np.array([c.shape[:2] for c in again]) - [c.shape[:2] for c in crops]
        assert np.abs(sizes).max() <= 1
        assert sorted(t for t, _ in rapidocr.recognize(again)) == ["EXIT", "SIGN"]
        if rapidocr.detects_in_place(frame.shape):
            assert all((a == c).all() for a, c in zip(again, crops, strict=True))


@pytest.mark.parametrize("batch", [1, 8])
def test_a_box_read_again_after_a_dropped_read_is_compared_with_its_own_frame(batch):
    # Read again, a box took its text from its own frame but kept the dropped frame as the one
    # later frames are compared with: a dimmer last frame, within reuse_diff of the dropped
    # one, took 'SIGN' it does not show, with 8 frames per batch (the stage's default) only
    frames = np.stack([fading(220)] + [fading(250)] * 7 + [fading(190)])
    gate, found = BoxGate(BrightOnly(), reuse_iou=0.7, reuse_diff=0.15), []
    for start in range(0, len(frames), batch):
        found += texts(gate(frames[start : start + batch]))
    assert found == ungated(frames)


@pytest.mark.parametrize("regions", [False, True])
@pytest.mark.parametrize("batch", [1, 8])
def test_frame_plus_boxes_reads_a_dropped_read_again_on_frames_it_calls_unchanged(regions, batch):
    # The frame gate called the brighter frames unchanged and they took frame 0's dropped read
    frames = np.stack([fading(220)] + [fading(250)] * 5)
    engine = BrightOnly()
    gate = BoxGate(engine, 0.7, 0.15, 0.05, 1, True, True, regions, 48)
    found = []
    for start in range(0, len(frames), batch):
        found += texts(gate(frames[start : start + batch]))
    assert found == ungated(frames)
    assert engine.detected == 1  # read again by recognition alone, no detector run


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
    """The real engine, gated ("boxes", and the default with its regions) and not, on the 12
    synthetic videos (T = 4, 0.5 OCR frames/s): each writes its own group, the gate reports
    what it read, and every key text the ungated run found, each gated run found too."""
    work = make_work(synth_set, tmp_path)
    meta = {
        v["path"]: v["key_text"]
        for v in json.loads((synth_set / "synth_meta.json").read_text())["videos"]
    }  # noqa: E501
    paths = work.manifest.videos.column("path")
    found = {}
    for reuse in ("off", "boxes", "frame+boxes"):
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
        if reuse == "frame+boxes":  # some frames detected in their changed regions only
            figures = report.figures
            assert 0 < figures["frames_regional_share"] < figures["frames_read_share"]
            assert figures["detected_area_share"] < figures["frames_read_share"]
    keys = {row: meta[next(p for p in meta if str(paths[row]).endswith(p))] for row in found["off"]}
    read_off = {row for row, key in keys.items() if key in found["off"][row]}
    for reuse in ("boxes", "frame+boxes"):
        read_gated = {row for row, key in keys.items() if key in found[reuse][row]}
        assert read_off and read_off <= read_gated


def test_gate_variants_share_one_engine_and_engine_settings_do_not():
    """The engine cache was keyed by every OCR setting: each gate variant of a benchmark's
    loop loaded its own rapidocr."""
    one = make_engine(OcrSettings(reuse="off"))
    assert make_engine(OcrSettings(reuse_diff=0.3, reuse_block_px=0)) is one
    assert make_engine(OcrSettings(det_limit_side=512)) is not one
    assert make_engine(OcrSettings(reuse="off"), threads=2) is not one
