"""The window-OCR captioner: T captions per video from its OCR lines (DESIGN section 4).

For each of the `T` segment centres t_i (the times `encode` samples), gather the lines whose
time lies in `[t_i - xi*dt/2, t_i + xi*dt/2]` with `dt = duration / T`, drop lines under
`min_score`, normalise whitespace, merge duplicates (case-folded text; a track seen over many
frames counts once), order by first appearance then reading order (top to bottom, left to
right), and join. An empty window gives an empty caption and a False mask bit. The cut to the
text encoder's token limit happens in `encode`, which owns the tokenizer (`fit_to_tokens`).

Also the StarVR-style instance list: the video's distinct OCR words by best score, up to
`max_instances`.

Cache layout of group `stages/captions/<key>` (one chunk per row):
    captions   str  (T,)  window captions
    mask       bool (T,)  True where the window held text
    instances  str        JSON list of distinct words, best score first
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cache import Shard, StageGroup, WorkDir
from pipeline.ocr import Line, ocr_group, read_lines
from pipeline.settings import CaptionSettings, OcrSettings
from pipeline.stage import StageReport, guarded, run_stage
from pipeline.video import segment_centres

_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def window_captions(
    lines: list[Line], duration: float, settings: CaptionSettings
) -> tuple[list[str], np.ndarray]:
    """The T window captions of one video and their mask."""
    kept = [
        line for line in lines if line["score"] >= settings.min_score and normalise(line["text"])
    ]
    centres = segment_centres(duration, settings.frames)
    half = settings.xi * duration / settings.frames / 2
    captions = []
    for centre in centres:
        inside = [line for line in kept if centre - half <= line["t"] <= centre + half]
        captions.append(settings.separator.join(_distinct_in_order(inside)))
    return captions, np.array([bool(c) for c in captions])


def _distinct_in_order(lines: list[Line]) -> list[str]:
    """Distinct texts (case-folded; a track over many frames is one text), in first-seen order."""
    first: dict[str, tuple[float, float, float, str]] = {}
    for line in lines:
        text = normalise(line["text"])
        key = text.casefold()
        box = np.asarray(line["box"], dtype=float)
        order = (float(line["t"]), float(box[:, 1].min()), float(box[:, 0].min()), text)
        if key not in first or order < first[key]:
            first[key] = order
    return [item[3] for item in sorted(first.values())]


def ocr_instances(lines: list[Line], settings: CaptionSettings) -> list[str]:
    """Distinct OCR words (case-folded), best score first, at most `max_instances`."""
    best: dict[str, tuple[float, str]] = {}
    for line in lines:
        if line["score"] < settings.min_score:
            continue
        for word in normalise(line["text"]).split(" "):
            if word and (word.casefold() not in best or line["score"] > best[word.casefold()][0]):
                best[word.casefold()] = (float(line["score"]), word)
    ranked = sorted(best.values(), key=lambda item: (-item[0], item[1]))
    return [word for _, word in ranked[: settings.max_instances]]


def fit_to_tokens(text: str, count_tokens: Callable[[str], int], limit: int) -> str:
    """Cut `text` to at most `limit` tokens, keeping whole words (binary search on words)."""
    if count_tokens(text) <= limit:
        return text
    words = text.split(" ")
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def caption_group(work: WorkDir, settings: CaptionSettings, ocr: StageGroup) -> StageGroup:
    return work.stage("captions", settings, upstream=ocr.key)


def run_captions(
    work: WorkDir,
    settings: CaptionSettings,
    ocr_settings: OcrSettings,
    retry_failed: bool = False,
    progress: bool = True,
    shard: Shard | None = None,
) -> StageReport:
    """Build window captions and instance lists for every pending video from cached OCR."""
    ocr = ocr_group(work, ocr_settings)
    group = caption_group(work, settings, ocr)
    durations = work.manifest.videos.column("duration")
    ocr_done = ocr.row_states()["done"]

    def produce(rows: np.ndarray) -> Iterator[tuple[int, Any]]:
        for row in rows:

            def compute(row: int = int(row)) -> dict[str, Any]:
                if not ocr_done[row]:
                    message = dict(ocr.errors()).get(row, "not computed yet; run `tcd ocr` first")
                    raise RuntimeError(f"no OCR for this video: {message}")
                lines = read_lines(ocr, row)
                captions, mask = window_captions(lines, float(durations[row]), settings)
                instances = ocr_instances(lines, settings)
                return {
                    "captions": np.array(captions, dtype=str),
                    "mask": mask,
                    "instances": json.dumps(instances, ensure_ascii=False),
                }

            yield guarded(int(row), compute)

    arrays = {
        "captions": ((settings.frames,), str, ""),
        "mask": ((settings.frames,), "bool", False),
        "instances": ((), str, ""),
    }
    return run_stage(work, group, arrays, produce, retry_failed, progress, shard)
