"""The OCR stage's temporal gate (`ocr.reuse`): do not read the same text twice.

Video text is redundant: a sign stays on screen for seconds, so consecutive sampled frames
mostly hold the lines already read. Each reader below takes the frames of one video in time
order, batch by batch, and returns each frame's lines as the engine would, computing only
what changed:

- `FrameGate` ("frame"): a frame takes the lines of the last frame that was read when no
  8x8 block of their grey thumbnails differs by more than `reuse_frame_diff` (a block's
  mean absolute difference, pixels in [0, 1]); any other frame is read whole. A block, not
  the whole thumbnail, so that a small sign appearing is a change; a block covers
  `reuse_block_px` frame pixels a side whatever the frame's size (`thumb_size`: 64x36 for
  384x216, 320x180 for 1080p), so a subtitle appearing in a 1080p frame changes one as it
  does in a small frame.
- `BoxGate` ("boxes"): the detector runs on every frame; a box takes the text of a box of the
  previous frame when their IoU is >= `reuse_iou` and its crop is unchanged since that text
  was recognised: the crop's inner part (a quarter of the box height in from each side) is
  aligned within the frame of recognition (best match within half a box height), and no
  character-sized patch (box height x half of it) of the aligned difference exceeds
  `reuse_diff`, and its width and height are within half its height of the previous box's
  (a text scrolling in or typed grows by a character, which the inner crop may not see).
  Aligning absorbs drift of a few pixels; the patch maximum sees one changed character,
  which a mean over the whole crop would dilute. With `reuse_shift` = k each patch takes
  the best offset within k pixels of the crop's alignment: a text drifting by a fraction of
  a pixel lands on the pixel grid glyph by glyph, so some letters move by a pixel and others
  do not, which one alignment of the whole crop cannot absorb (small text then differs by
  0.2 to 0.35 though nothing changed); a changed character differs at every offset. With
  `reuse_edge`, a side of the box on the frame's edge is not inset: a text sliding in or
  out of the frame changes there (a static text cut by the edge still matches). The
  boxes left are recognised together, `ocr.rec_batch` crops per call. Comparing with the
  frame of recognition, not the previous one, keeps slow changes from accumulating unseen.
  Only a text that was read is reused: a box whose read was dropped (blurred, fading in) is
  read again in the next frame.
- "frame+boxes": both; a frame "frame" calls unchanged takes the last detected frame's
  boxes and texts without running the detector, any other goes through "boxes". With
  `reuse_frame_texts`, a frame is unchanged only if each of those boxes also passes the box
  test: a thumbnail block is 48x48 pixels of the frame, and a scoreboard digit changing
  inside it moves its mean by far less than `reuse_frame_diff`.
  With `reuse_regions`, the detector runs only on the changed parts of a frame
  (`changed_regions`: the changed thumbnail blocks and the boxes failing the box test, grown
  to take whole every last box they touch), each at the whole frame's scale, and the last
  boxes elsewhere stand; parts over REGION_MAX_SHARE of the frame, a box reaching a part's
  inner side, or parts adding up to a whole frame's area since the last whole detection
  send the frame to the detector whole. The thumbnail the detector saw is the reference
  part by part, so a slow change beside a fast one still adds up; a text whose blocks
  change by less than `reuse_frame_diff`, appearing beside a larger change, waits for the
  next whole detection.

Lines keep the current frame's time (and, for "boxes", its box). What a gate can lose is
text that changes below its thresholds; `bench.ocr_reuse` measures it (key-text recall and
retrieval R@1 against the ungated cache). The thresholds are ocr settings, so they key the
ocr group (those its mode reads: `pipeline.settings.gate_in_effect`). The default is
"frame+boxes" with `reuse_shift` 1, `reuse_edge`, `reuse_frame_texts` and `reuse_regions`
(README: the OCR gate, and what it buys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

Found = list[tuple[str, float, list]]  # one frame's lines: (text, score, box 4x2)
FRAME_THUMB = (64, 36)  # (width, height) of the fixed thumbnail of `reuse_block_px = 0`
FRAME_BLOCK = 8  # side of the thumbnail blocks whose change counts
REGION_MAX_SHARE = 0.5  # changed regions over this share of a frame: detect it whole
Rect = tuple[int, int, int, int]  # (x0, y0, x1, y1), frame or thumbnail pixels


def grey(image: np.ndarray) -> np.ndarray:
    """The grey (uint8) copy of an RGB image."""
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def thumb_size(shape: tuple[int, ...], block_px: int) -> tuple[int, int]:
    """(width, height) of the grey thumbnail the gate compares for a frame of `shape`: a
    thumbnail block (8x8 pixels) covers `block_px` frame pixels a side (48: a 384x216 frame
    gives 64x36, a 1080p one 320x180), so a text of a given size changes a block alike in
    any frame; 0: the fixed 64x36 of earlier versions (a block 240 pixels wide at 1080p, where
    a new subtitle moved no block past `reuse_frame_diff`)."""
    if not block_px:
        return FRAME_THUMB
    scale = block_px / FRAME_BLOCK
    height, width = shape[:2]
    return max(FRAME_BLOCK, round(width / scale)), max(FRAME_BLOCK, round(height / scale))


def frame_thumbnail(grey_frame: np.ndarray, block_px: int) -> np.ndarray:
    """The area-downscaled thumbnail of a grey frame (`thumb_size`), float32 in [0, 1]."""
    size = thumb_size(grey_frame.shape, block_px)
    small = cv2.resize(grey_frame, size, interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def frame_change(a: np.ndarray, b: np.ndarray) -> float:
    """The largest mean absolute difference of an 8x8 block of two frame thumbnails."""
    return float(cv2.blur(np.abs(a - b), (FRAME_BLOCK, FRAME_BLOCK)).max())


def changed_mask(thumb: np.ndarray, last: np.ndarray, frame_diff: float) -> np.ndarray:
    """The thumbnail pixels (bool, the thumbnail's shape) of the 8x8 blocks that changed by
    more than `frame_diff` (as `frame_change` measures), and one pixel around them."""
    blocks = cv2.blur(np.abs(thumb - last), (FRAME_BLOCK, FRAME_BLOCK)) > frame_diff
    # the block of position p covers p-4..p+3 (cv2's anchor); one more pixel on each side
    reach = np.ones((FRAME_BLOCK + 2, FRAME_BLOCK + 2), np.uint8)
    return cv2.dilate(blocks.astype(np.uint8), reach, anchor=(FRAME_BLOCK // 2,) * 2) > 0


def under_box(
    box: np.ndarray, shape: tuple[int, ...], thumb: tuple[int, ...], margin: int = 0
) -> tuple[slice, slice]:
    """The pixels (rows, columns) of a thumbnail of shape `thumb` under a box of a frame of
    `shape`, `margin` more on each side."""
    (height, width), (frame_h, frame_w) = thumb[:2], shape[:2]
    x0, y0, x1, y1 = box_rect(box)
    to_x, to_y = width / frame_w, height / frame_h
    return (
        slice(max(0, int(y0 * to_y) - margin), min(height, int(np.ceil(y1 * to_y)) + margin)),
        slice(max(0, int(x0 * to_x) - margin), min(width, int(np.ceil(x1 * to_x)) + margin)),
    )


def changed_regions(
    changed: np.ndarray, boxes: list[np.ndarray], shape: tuple[int, ...]
) -> list[Rect] | None:
    """Rectangles of thumbnail pixels (x0, y0, x1, y1) that cover the `changed` pixels and,
    whole and one pixel more, each of `boxes` (the last detected) they touch: a box is
    detected whole or kept whole. They are disjoint (rectangles that overlapped would have
    been one component). None when they cover more than REGION_MAX_SHARE of the frame,
    where detecting it whole is about as cheap."""
    mask, thumb = changed.copy(), changed.shape
    while True:  # the mask only grows, so this ends
        grown = False
        for box in boxes:
            inner, outer = under_box(box, shape, thumb), under_box(box, shape, thumb, 1)
            if mask[inner].any() and not mask[outer].all():
                mask[outer] = grown = True
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
        rects = [(x, y, x + w, y + h) for x, y, w, h, _ in stats[1:]]
        filled = np.zeros_like(mask)
        for x0, y0, x1, y1 in rects:
            filled[y0:y1, x0:x1] = True
        if not grown and np.array_equal(filled, mask):
            break
        mask = filled
    return None if mask.mean() > REGION_MAX_SHARE else rects


def covered(rects: list[Rect], shape: tuple[int, ...]) -> float:
    """The share of an image of `shape` that disjoint `rects` cover."""
    return sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in rects) / (shape[0] * shape[1])


def thumb_to_frame(rect: Rect, shape: tuple[int, ...], thumb: tuple[int, ...]) -> Rect:
    """The frame pixels (x0, y0, x1, y1) of a rectangle of pixels of a thumbnail of shape
    `thumb`."""
    x0, y0, x1, y1 = rect
    (height, width), (frame_h, frame_w) = thumb[:2], shape[:2]
    to_x, to_y = frame_w / width, frame_h / height
    return (
        int(x0 * to_x),
        int(y0 * to_y),
        min(frame_w, int(np.ceil(x1 * to_x))),
        min(frame_h, int(np.ceil(y1 * to_y))),
    )


def on_inner_edge(box: np.ndarray, regions: list[Rect], shape: tuple[int, ...]) -> bool:
    """Whether a box detected in `regions` (clipped to its region) reaches a side of its
    region that is not the frame's edge: its text may go on outside, so the frame is
    detected whole instead."""
    bx0, by0, bx1, by1 = box_rect(box)
    cx, cy, near = (bx0 + bx1) / 2, (by0 + by1) / 2, 2.0
    frame_h, frame_w = shape[:2]
    for x0, y0, x1, y1 in regions:
        if x0 <= cx <= x1 and y0 <= cy <= y1:
            return (
                (x0 > 0 and bx0 <= x0 + near)
                or (y0 > 0 and by0 <= y0 + near)
                or (x1 < frame_w and bx1 >= x1 - near)
                or (y1 < frame_h and by1 >= y1 - near)
            )
    return True


def box_rect(box: np.ndarray) -> tuple[float, float, float, float]:
    """The axis-aligned rectangle (x0, y0, x1, y1) around a 4-point box."""
    box = np.asarray(box, dtype=float).reshape(4, 2)
    return box[:, 0].min(), box[:, 1].min(), box[:, 0].max(), box[:, 1].max()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes' rectangles."""
    ax0, ay0, ax1, ay1 = box_rect(a)
    bx0, by0, bx1, by1 = box_rect(b)
    w, h = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
    inter = max(0.0, w) * max(0.0, h)
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def extent_change(a: np.ndarray, b: np.ndarray) -> float:
    """How much a box's width or height differs from another's, in units of its height: a
    text that grew by a character (scrolling in, typed) changes by about 0.5 or more."""
    ax0, ay0, ax1, ay1 = box_rect(a)
    bx0, by0, bx1, by1 = box_rect(b)
    height = max(ay1 - ay0, 1.0)
    return max(abs((ax1 - ax0) - (bx1 - bx0)), abs((ay1 - ay0) - (by1 - by0))) / height


def box_change(
    current: np.ndarray,
    seen: np.ndarray,
    box: np.ndarray,
    shift: int = 0,
    edge: bool = False,
    enough: float = 0.0,
) -> float:
    """How much the text in `box` of grey frame `current` differs from grey frame `seen`
    (see the module docstring): the largest character-sized patch mean of the absolute
    difference after aligning the box's inner crop within `seen`, each patch taking the
    best of the offsets within `shift` pixels of that alignment; with `edge`, a side of the
    box on the frame's edge is not inset; 1.0 when the box is too small or too near the
    border to compare. Offsets are tried from the alignment out, and the search stops once
    the difference is at most `enough` (a caller comparing with a threshold passes it)."""
    height, width = current.shape
    x0, y0, x1, y1 = box_rect(box)
    x0, y0 = int(max(0, np.floor(x0))), int(max(0, np.floor(y0)))
    x1, y1 = int(min(width, np.ceil(x1))), int(min(height, np.ceil(y1)))
    inset, margin = max(1, (y1 - y0) // 4), max(2, (y1 - y0) // 2)
    left, top = (0 if edge and v <= 1 else inset for v in (x0, y0))
    right, bottom = (
        0 if edge and v >= size - 1 else inset for v, size in ((x1, width), (y1, height))
    )
    inner = current[y0 + top : y1 - bottom, x0 + left : x1 - right].astype(np.float32)
    area = seen[
        max(0, y0 + top - margin) : min(height, y1 - bottom + margin),
        max(0, x0 + left - margin) : min(width, x1 - right + margin),
    ].astype(np.float32)
    rows, cols = inner.shape
    if rows < 2 or cols < 2 or area.shape[0] < rows or area.shape[1] < cols:
        return 1.0
    y, x = np.unravel_index(
        cv2.matchTemplate(area, inner, cv2.TM_SQDIFF).argmin(),
        (area.shape[0] - rows + 1, area.shape[1] - cols + 1),
    )
    patch, best = (max(1, rows // 2), rows), None
    offsets = sorted(
        ((dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)),
        key=lambda o: abs(o[0]) + abs(o[1]),
    )
    for dy, dx in offsets:
        oy, ox = y + dy, x + dx
        if oy < 0 or ox < 0 or oy + rows > area.shape[0] or ox + cols > area.shape[1]:
            continue
        diff = cv2.blur(np.abs(inner - area[oy : oy + rows, ox : ox + cols]), patch)
        best = diff if best is None else np.minimum(best, diff)
        if best.max() / 255.0 <= enough:
            break
    return float(best.max()) / 255.0  # type: ignore[union-attr]  # offset 0 always fits


@dataclass
class GateCounts:
    """What a gate did over its frames: read whole or reused (frame), boxes recognised or
    reused (boxes), and why the box gate recognised a detected box: no box of the previous
    frame at IoU >= reuse_iou (`new`), its crop changed (`changed`), it grew (`grown`), or
    the read it would take was dropped (`dropped`); for the stage's report."""

    frames: int = 0
    frames_read: int = 0
    frames_regional: int = 0  # of frames_read: the detector ran on changed regions only
    area_detected: float = 0.0  # frames' worth of area the detector ran on
    boxes: int = 0
    boxes_read: int = 0
    read_because: dict[str, int] = field(default_factory=lambda: dict.fromkeys(READ_REASONS, 0))


READ_REASONS = ("new", "changed", "grown", "dropped")


class FrameGate:
    """`ocr.reuse = "frame"` over a whole-frame engine (`engine(frames) -> [Found]`)."""

    def __init__(
        self,
        engine: Callable[[np.ndarray], list[Found]],
        reuse_frame_diff: float,
        reuse_block_px: int = 0,
    ):
        self.engine, self.reuse_frame_diff = engine, reuse_frame_diff
        self.reuse_block_px = reuse_block_px
        self.counts = GateCounts()
        self.start_video()

    def start_video(self) -> None:
        self.last_thumb: np.ndarray | None = None
        self.last_found: Found = []

    def __call__(self, frames: np.ndarray) -> list[Found]:
        source: list[int] = []  # per frame: index of the read frame whose lines it takes
        read: list[int] = []
        for i, frame in enumerate(frames):
            thumb = frame_thumbnail(grey(frame), self.reuse_block_px)
            last = self.last_thumb
            if last is None or frame_change(thumb, last) > self.reuse_frame_diff:
                self.last_thumb = thumb
                read.append(i)
            source.append(read[-1] if read else -1)  # -1: the last frame of an earlier batch
        found = dict(zip(read, self.engine(frames[read]) if read else [], strict=True))
        out = [found[s] if s >= 0 else self.last_found for s in source]
        if out:
            self.last_found = out[-1]
        self.counts.frames += len(frames)
        self.counts.frames_read += len(read)
        return out


@dataclass
class _Track:
    """A box of a frame: where it is, its crop (None for a box carried onto a frame the
    detector skipped: cut when needed), the grey frame where the text it takes was
    recognised, and which recognition of the batch that is (`slot`; -1 once `result` is
    known). `own`: that recognition is of this box's crop. `frame`, `index`: its own grey
    frame and that frame's place in the batch."""

    box: np.ndarray
    crop: np.ndarray | None
    seen: np.ndarray
    slot: int
    result: tuple[str, float] | None
    own: bool
    frame: np.ndarray
    index: int

    def continued(
        self, box: np.ndarray, crop: np.ndarray | None, frame: np.ndarray, index: int
    ) -> _Track:
        """A box of a later frame that takes this box's text (`crop` None: a frame where the
        detector did not look, this box carried onto it)."""
        return _Track(box, crop, self.seen, self.slot, self.result, False, frame, index)

    def dropped(self, results: list[tuple[str, float]]) -> bool:
        """Whether the read this box takes its text from was dropped (no text)."""
        return not (self.result if self.result is not None else results[self.slot])[0]


class BoxGate:
    """`ocr.reuse = "boxes"` over an engine with `detect(frame) -> (boxes, crops)`,
    `recognize(crops) -> [(text, score)]` and `crop(frame, boxes) -> crops` (a box whose read
    was dropped is read again on a frame the detector skipped; `pipeline.ocr.RapidOcrEngine`).
    With `reuse_frame_diff` ("frame+boxes"), a frame that "frame" would call unchanged since the
    last detected one takes that frame's boxes and texts without running the detector. With
    `reuse_regions` too, and an engine with `detect(frame, regions)` and
    `detects_in_place(shape)`, a changed frame is detected in its changed regions only."""

    def __init__(
        self,
        engine: Any,
        reuse_iou: float,
        reuse_diff: float,
        reuse_frame_diff: float | None = None,
        reuse_shift: int = 0,
        reuse_edge: bool = False,
        reuse_frame_texts: bool = False,
        reuse_regions: bool = False,
        reuse_block_px: int = 0,
    ):
        self.engine, self.reuse_iou, self.reuse_diff = engine, reuse_iou, reuse_diff
        self.reuse_block_px = reuse_block_px
        self.reuse_frame_diff, self.reuse_shift = reuse_frame_diff, reuse_shift
        self.reuse_edge, self.reuse_frame_texts = reuse_edge, reuse_frame_texts
        self.reuse_regions = reuse_regions
        self.counts = GateCounts()
        self.start_video()

    def start_video(self) -> None:
        self.tracks: list[_Track] = []
        self.last_thumb: np.ndarray | None = None  # the thumbnail as the detector last saw it
        self.regional_area = 0.0  # frames' worth detected in regions since the last whole

    def _plan(self, frame: np.ndarray) -> list[Rect] | None:
        """Where the detector runs on this grey frame: None for the whole frame, [] for
        nowhere (the last boxes and texts stand: the frame gate calls it unchanged and, with
        `reuse_frame_texts`, so does the box test of each last box), or, with
        `reuse_regions`, the changed regions (`changed_regions`, thumbnail pixels) where
        the engine detects frames of this size in place, until they add up to a whole
        frame's area since the detector last ran on a whole frame (then it does again, so a
        text under reuse_frame_diff that appeared beside a change is found late, not
        never). What the detector sees becomes what later frames are compared with."""
        if self.reuse_frame_diff is None:
            return None
        thumb, last = frame_thumbnail(frame, self.reuse_block_px), self.last_thumb
        if last is None:
            self.last_thumb = thumb
            return None
        changed = changed_mask(thumb, last, self.reuse_frame_diff)
        in_place = getattr(self.engine, "detects_in_place", lambda shape: False)
        if not (self.reuse_regions and in_place(frame.shape)):
            if changed.any() or (self.reuse_frame_texts and not self._texts_unchanged(frame)):
                self.last_thumb = thumb
                return None
            return []
        for track in self.tracks if self.reuse_frame_texts else []:  # changed, blocks not
            if not changed[under_box(track.box, frame.shape, thumb.shape)].any():
                if self._text_changed(frame, track.seen, track.box):
                    changed[under_box(track.box, frame.shape, thumb.shape, 1)] = True
        if not changed.any():
            return []
        for track in self.tracks:  # a dropped read is read again where the detector runs
            if track.result is not None and not track.result[0]:
                changed[under_box(track.box, frame.shape, thumb.shape, 1)] = True
        regions = changed_regions(changed, [t.box for t in self.tracks], frame.shape)
        area = covered(regions or [], changed.shape)
        if regions is None or self.regional_area + area >= 1.0:
            self.last_thumb, self.regional_area = thumb, 0.0
            return None
        self.regional_area += area
        self.last_thumb = last.copy()
        for x0, y0, x1, y1 in regions:
            self.last_thumb[y0:y1, x0:x1] = thumb[y0:y1, x0:x1]
        return regions

    def _cut(self, tracks: list[_Track], frames: np.ndarray) -> None:
        """Cut the crops of boxes carried onto frames the detector skipped (the engine's
        `crop`, as its `detect` cuts them)."""
        for index in sorted({t.index for t in tracks}):
            on_frame = [t for t in tracks if t.index == index]
            boxes = np.stack([np.asarray(t.box, dtype=float).reshape(4, 2) for t in on_frame])
            for track, crop in zip(on_frame, self.engine.crop(frames[index], boxes), strict=True):
                track.crop = crop

    def _texts_unchanged(self, frame: np.ndarray) -> bool:
        """Whether every box of the last detected frame still holds the text it took, by the
        box test (a digit of a small sign changes a thumbnail block by far less than
        `reuse_frame_diff`)."""
        return not any(self._text_changed(frame, t.seen, t.box) for t in self.tracks)

    def _text_changed(self, current: np.ndarray, seen: np.ndarray, box: np.ndarray) -> bool:
        """The box test: the text in `box` differs from `seen` by more than reuse_diff."""
        shift, edge, limit = self.reuse_shift, self.reuse_edge, self.reuse_diff
        return box_change(current, seen, box, shift, edge, enough=limit) > limit

    def _match(self, box: np.ndarray, frame: np.ndarray) -> _Track | None:
        """The previous frame's box this one continues unchanged, if any (counting why not).
        A box whose read was dropped (no text over rapidocr's score) is never continued: it
        is read again."""
        best, best_iou = None, self.reuse_iou
        for track in self.tracks:
            overlap = iou(box, track.box)
            if overlap >= best_iou:
                best, best_iou = track, overlap
        if best is None:
            reason = "new"
        elif best.result is not None and not best.result[0]:
            reason = "dropped"
        elif extent_change(box, best.box) > 0.5:
            reason = "grown"
        elif self._text_changed(frame, best.seen, box):
            reason = "changed"
        else:
            return best
        self.counts.read_because[reason] += 1
        return None

    def _detect(
        self, frame: np.ndarray, frame_grey: np.ndarray, regions: list[Rect] | None
    ) -> tuple[np.ndarray, list[np.ndarray], list[_Track]]:
        """The detector's boxes and crops on the frame, whole (`regions` None) or in the
        changed regions (thumbnail pixels), and the last boxes the frame keeps: those
        outside the regions. A box that reaches a region's inner side sends the frame to the
        detector whole (both runs count in `counts.area_detected`)."""
        shape = frame_grey.shape
        thumb = thumb_size(shape, self.reuse_block_px)[::-1]
        if regions is not None:
            in_frame = [thumb_to_frame(r, shape, thumb) for r in regions]
            boxes, crops = self.engine.detect(frame, in_frame)
            self.counts.area_detected += covered(in_frame, shape)
            if not any(on_inner_edge(box, in_frame, shape) for box in boxes):
                inside = np.zeros(thumb, bool)
                for x0, y0, x1, y1 in regions:
                    inside[y0:y1, x0:x1] = True
                self.counts.frames_regional += 1
                kept = [t for t in self.tracks if not inside[under_box(t.box, shape, thumb)].any()]
                return boxes, crops, kept
            self.last_thumb = frame_thumbnail(frame_grey, self.reuse_block_px)
            self.regional_area = 0.0
        self.counts.area_detected += 1.0
        return *self.engine.detect(frame), []

    def __call__(self, frames: np.ndarray) -> list[Found]:
        crops: list[np.ndarray] = []  # to recognise, pooled over the batch's frames
        per_frame: list[list[_Track]] = []
        detected = 0
        for index, frame in enumerate(frames):
            frame_grey = grey(frame)  # what the thumbnail and the box test compare
            regions = self._plan(frame_grey)
            if regions == []:
                current = [
                    track.continued(track.box, None, frame_grey, index) for track in self.tracks
                ]
            else:
                detected += 1
                boxes, box_crops, kept = self._detect(frame, frame_grey, regions)
                current = [track.continued(track.box, None, frame_grey, index) for track in kept]
                for box, crop in zip(boxes, box_crops, strict=True):
                    track = self._match(box, frame_grey)
                    if track is None:
                        slot = len(crops)
                        crops.append(crop)
                        current.append(
                            _Track(box, crop, frame_grey, slot, None, True, frame_grey, index)
                        )
                    else:
                        current.append(track.continued(box, crop, frame_grey, index))
            per_frame.append(current)
            self.tracks = current
            self.counts.boxes += len(current)
        results = self.engine.recognize(crops) if crops else []
        # A box that takes the text of a read that was dropped (no text over the score) is
        # read after all, in its own frame, which it is compared with from then on: a dropped
        # read is never reused, whether the box continued it or the detector skipped its frame
        again = [t for current in per_frame for t in current if not t.own and t.dropped(results)]
        self._cut([t for t in again if t.crop is None], frames)
        reread = self.engine.recognize([t.crop for t in again]) if again else []
        for track, result in zip(again, reread, strict=True):
            track.result, track.slot, track.seen, track.own = result, -1, track.frame, True
        self.counts.frames += len(frames)
        self.counts.frames_read += detected
        self.counts.boxes_read += len(crops) + len(again)
        self.counts.read_because["dropped"] += len(again)
        out = []
        for current in per_frame:
            for track in current:
                if track.result is None:
                    track.result, track.slot = results[track.slot], -1
            out.append(
                [
                    (text, score, np.asarray(track.box, dtype=float).reshape(4, 2).tolist())
                    for track in current
                    for text, score in [track.result]
                    if text
                ]
            )
        return out
