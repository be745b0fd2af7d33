"""The box gate's crop test (`pipeline.ocr_reuse.box_change`) on pairs it really meets, and
on rendered changed characters it must never pass.

1. Real pairs: the box gate (`boxes`, first rule) runs over the first `--videos` videos of
   the *train* split of each synthetic set (the bench's test splits are never looked at);
   each box it compares with the box of the previous frame (IoU >= 0.7, a read text, not
   grown) gives a pair: the current frame, the frame of recognition and the box. The pair's
   label is whether rapidocr reads the current crop as the text it would reuse (spaces and
   case aside). Reported per set and `reuse_shift`: the share of same-text pairs the test
   passes at `reuse_diff` 0.15 (the reads it saves), and how many different-text pairs it
   passes (mostly the same pixels read differently: a box cut a letter).
2. Rendered pairs: ten texts and their one-character changes (a score, a clock, a lap, a
   word), in the synthetic set's four DejaVu fonts at 14-22 px, drawn at 4x and
   area-downscaled with sub-pixel drifts of 0 to 1.6 px, then JPEG-compressed (quality 60).
   Reported per `reuse_shift`: the share of unchanged pairs passed, and the changed pairs
   passed (which must be 0) with the smallest difference among them.

    python -m bench.gate_pairs [--videos 40]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from bench.common import save
from pipeline.ocr import RapidOcrEngine, ocr_sample_times
from pipeline.ocr_reuse import BoxGate, box_change, extent_change, grey, iou
from pipeline.settings import CaptionSettings, OcrSettings
from pipeline.synth import FONT_FILES, _font
from pipeline.video import probe, read_frames

SETS = {"simple": Path("work/synth"), "temporal": Path("work/synth-temporal")}
SHIFTS = (0, 1)
THRESHOLD = 0.15  # OcrSettings.reuse_diff
CHANGES = [
    ("SCORE 12", "SCORE 13"), ("GATE 4", "GATE 7"), ("RY 4701", "RY 4707"),
    ("SOUP 4.50", "SOUP 4.80"), ("2 - 1", "3 - 1"), ("LAP 6", "LAP 8"), ("ROOM 305", "ROOM 308"),
    ("10:42", "10:43"), ("PLAY", "PLAN"), ("CAFE", "CARE"),
]  # fmt: skip


class PairGate(BoxGate):
    """The box gate (first rule), keeping each comparison its crop test makes."""

    def __init__(self, engine: RapidOcrEngine):
        super().__init__(engine, 0.7, THRESHOLD)
        self.pairs: list[dict[str, Any]] = []
        self.crops: list[np.ndarray] = []

    def _match(self, box: np.ndarray, frame: np.ndarray) -> Any:
        crop = self.crops.pop(0)
        best = max(self.tracks, key=lambda t: iou(box, t.box), default=None)
        if best is not None and iou(box, best.box) >= self.reuse_iou:
            if extent_change(box, best.box) <= 0.5:  # its text is known once the batch is read
                pair = {"cur": frame, "seen": best.seen, "box": box, "crop": crop, "track": best}
                self.pairs.append(pair)
        return super()._match(box, frame)

    def __call__(self, frames: np.ndarray) -> Any:
        found = super().__call__(frames)
        for pair in self.pairs:
            if "track" in pair:
                pair["text"] = pair.pop("track").result[0]
        self.pairs = [p for p in self.pairs if p["text"]]  # a dropped read is never reused
        return found


def real_pairs(root: Path, videos: int, engine: RapidOcrEngine) -> list[dict[str, Any]]:
    """The crop test's pairs over the first `videos` train videos of a synthetic set."""
    gate, settings = PairGate(engine), OcrSettings()
    detect = engine.detect

    def keeping_crops(frame: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        boxes, crops = detect(frame)
        gate.crops.extend(crops)
        return boxes, crops

    engine.detect = keeping_crops  # type: ignore[method-assign]
    try:
        train = json.loads((root / "TextVR_train.json").read_text())[:videos]
        for video in train:
            path = str(root / "Video" / video["path"])
            gate.start_video()
            times = ocr_sample_times(probe(path).duration, settings, CaptionSettings().frames)
            for _, frames in read_frames(path, times, 8):
                gate(frames)
    finally:
        engine.detect = detect  # type: ignore[method-assign]
    reads = engine.recognize([p["crop"] for p in gate.pairs])
    for pair, (text, _) in zip(gate.pairs, reads, strict=True):
        pair["same"] = text.replace(" ", "").upper() == pair["text"].replace(" ", "").upper()
    return gate.pairs


def rendered(text: str, font: int, size: int, dx: float) -> tuple[np.ndarray, np.ndarray]:
    """A grey 384x80 frame with `text` on a panel `dx` pixels right of x = 40, and its box."""
    scale = 4
    face = _font(font, size * scale)
    left, top, right, bottom = face.getbbox(text)
    image = Image.new("RGB", (384 * scale, 80 * scale), (120, 130, 120))
    draw = ImageDraw.Draw(image)
    x0, y0 = int((40 + dx) * scale), 20 * scale
    panel = [x0, y0, x0 + right - left + 12 * scale, y0 + bottom - top + 10 * scale]
    draw.rectangle(panel, fill=(90, 60, 40))
    draw.text((x0 + 6 * scale - left, y0 + 5 * scale - top), text, font=face, fill=(240, 240, 230))
    small = cv2.resize(np.asarray(image), (384, 80), interpolation=cv2.INTER_AREA)
    _, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 60])
    w, h = (right - left) / scale + 12, (bottom - top) / scale + 10
    box = np.array([[0, 0], [w, 0], [w, h], [0, h]]) + [40 + dx, 20]
    return grey(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)), box


def rendered_pairs() -> dict[str, Any]:
    same: dict[int, list[float]] = {s: [] for s in SHIFTS}
    changed: dict[int, list[float]] = {s: [] for s in SHIFTS}
    grid = itertools.product(CHANGES, range(len(FONT_FILES)), (14, 16, 18, 22), (0, 0.4, 1, 1.6))
    for (before, after), font, size, dx in grid:
        seen, _ = rendered(before, font, size, 0.0)
        unchanged, box = rendered(before, font, size, dx)
        other, other_box = rendered(after, font, size, dx)
        for shift in SHIFTS:
            same[shift].append(box_change(unchanged, seen, box, shift))
            changed[shift].append(box_change(other, seen, other_box, shift))
    return {
        f"shift{s}": {
            "pairs": len(same[s]),
            "unchanged_passed_share": float(np.mean(np.array(same[s]) <= THRESHOLD)),
            "changed_passed": int(np.sum(np.array(changed[s]) <= THRESHOLD)),
            "changed_smallest_difference": float(np.min(changed[s])),
        }
        for s in SHIFTS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=40, help="train videos per set")
    args = parser.parse_args()
    engine = RapidOcrEngine(OcrSettings(), threads=1)
    results: dict[str, Any] = {"threshold": THRESHOLD, "videos_per_set": args.videos}
    for name, root in SETS.items():
        if not (root / "TextVR_train.json").exists():
            raise SystemExit(f"{root}: no synthetic set (make demo / make study make them)")
        pairs = real_pairs(root, args.videos, engine)
        same = np.array([p["same"] for p in pairs])
        results[name] = {"pairs": len(pairs), "same_text": int(same.sum())}
        for shift in SHIFTS:
            diff = np.array([box_change(p["cur"], p["seen"], p["box"], shift) for p in pairs])
            results[name][f"shift{shift}"] = {
                "same_text_passed_share": float(np.mean(diff[same] <= THRESHOLD)),
                "different_text_passed": int(np.sum(diff[~same] <= THRESHOLD)),
            }
        print(name, results[name], flush=True)
    results["rendered"] = rendered_pairs()
    print("rendered", results["rendered"], flush=True)
    save("gate_pairs", results)


if __name__ == "__main__":
    main()
