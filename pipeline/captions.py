"""The window-OCR captioner: T captions per video from its OCR lines (DESIGN section 4).

For each of the `T` segment centres t_i (the times `encode` samples), gather the lines whose
time lies in `[t_i - xi*dt/2, t_i + xi*dt/2]` with `dt = duration / T` (`in_windows`: a line
on an edge two windows share, every edge at xi = 1, goes to the later one only; with
`window_edges = "both"`, as in earlier versions, to both), drop lines under
`min_score`, normalise whitespace, merge duplicates (case-folded text; a track seen over
many frames counts once, its best-scored read), order by first appearance then reading order
(top to bottom, boxes on one line left to right: `_distinct_in_order`), and join. An empty
window gives an empty caption and a False mask bit. The cut to the
text encoder's token limit happens in `encode`, which owns the tokenizer (`fit_to_tokens`).

Also the StarVR-style instance list: the video's distinct OCR words by best score, up to
`max_instances`, and the share of the T windows that hold at least one OCR sample time
(`sampled_window_share`): 1.0 at every xi for an engine that decodes frames, since OCR reads
the T segment centres (`pipeline.ocr.ocr_sample_times`); NaN for imported OCR (kwai), whose
sample times are not known. Its mean over the group's videos is `window_sample_share(group)`
and the `window_sample_share` figure of the stage's report (`tcd cache status`).

Cache layout of group `stages/captions/<key>` (one chunk per row):
    captions      str     (T,)  window captions
    mask          bool    (T,)  True where the window held text
    instances     str           JSON list of distinct words, best score first
    sample_share  float32       share of the T windows holding an OCR sample time, or -1
                                where unknown (kwai; never NaN, so two builds compare equal)

Report phases: reading the OCR rows is read time, building the captions compute.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cache import UNREADABLE_VIDEO, Shard, StageGroup, WorkDir
from pipeline.errors import VideoError
from pipeline.ocr import Line, line_time, ocr_sample_times, read_lines
from pipeline.ocr_import import TIME_DECIMALS
from pipeline.settings import (
    CaptionSettings,
    OcrSettings,
    PipelineSettings,
    StageGroups,
    samples_frames,
)
from pipeline.stage import StageClock, StageReport, Upstream, guarded, run_stage
from pipeline.video import segment_centres

_SPACES = re.compile(r"\s+")
UNKNOWN_SHARE = -1.0  # `sample_share` of a video whose OCR sample times are not known


def normalise(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def window_captions(
    lines: list[Line], duration: float, settings: CaptionSettings
) -> tuple[list[str], np.ndarray]:
    """The T window captions of one video and their mask."""
    kept = [
        line for line in lines if line["score"] >= settings.min_score and normalise(line["text"])
    ]
    spans = window_spans(duration, settings)
    member = in_windows([line["t"] for line in kept], spans, settings.window_edges)
    captions = []
    for inside in member:
        lines_in = [line for line, keep in zip(kept, inside, strict=True) if keep]
        captions.append(settings.separator.join(_distinct_in_order(lines_in, settings)))
    return captions, np.array([bool(c) for c in captions])


def in_windows(
    times: np.ndarray | list[float], spans: tuple[np.ndarray, np.ndarray], edges: str
) -> np.ndarray:
    """(T, n) bool: whether time j lies in window i of `spans` (`window_spans`), bounds
    included, to the millisecond as line times are (so the centre of a window one frame long
    stays in it). A time on the end of a window that is also the next window's start (at
    xi = 1 every end is) is in the next window only with `edges = "next"`, in both with
    "both" (earlier versions, exactly); an end that is no other window's edge (xi < 1 leaves
    gaps, xi > 1 overlaps) keeps its time."""
    starts, ends = (np.asarray(a, dtype=np.float64).ravel()[:, None] for a in spans)
    t = np.asarray(times, dtype=np.float64).ravel()[None, :]
    if edges == "both":
        return (starts <= t) & (t <= ends)
    # an edge of two windows (every one at xi = 1), found before rounding: the two sides of
    # one edge, computed apart, can round to neighbouring milliseconds (2.3125 -> .312/.313)
    shared = np.isclose(ends[:-1], starts[1:], rtol=0, atol=1e-9)
    starts, ends = np.round(starts, TIME_DECIMALS), np.round(ends, TIME_DECIMALS)
    starts[1:][shared] = ends[:-1][shared]  # one edge, one millisecond
    inside = (starts <= t) & (t <= ends)
    inside[:-1] &= ~(shared & (t == ends[:-1]))  # there, the later window takes the time
    return inside


def window_spans(
    duration: float | np.ndarray, settings: CaptionSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end times of the T caption windows: segment centre t_i +- xi * dt / 2 with
    dt = duration / T. `duration` may be an (N, 1) array of several videos' durations."""
    centres = segment_centres(duration, settings.frames)
    half = settings.xi * duration / settings.frames / 2
    return centres - half, centres + half


def sampled_window_share(
    times: np.ndarray | list[float], spans: tuple[np.ndarray, np.ndarray], edges: str = "both"
) -> float:
    """Share of the windows `spans` = (starts, ends) (`window_spans`) that hold at least one of
    the sample `times`, by `edges` as in `window_captions` (`in_windows`). NaN for no
    windows."""
    if not np.asarray(spans[0]).size:
        return math.nan
    return float(in_windows(times, spans, edges).any(axis=1).mean())


def video_sample_share(duration: float, ocr: OcrSettings, settings: CaptionSettings) -> float:
    """`sampled_window_share` of one video: the times OCR reads (to the millisecond its lines
    keep) against its T windows; NaN for imported OCR (kwai: sample times unknown)."""
    if not samples_frames(ocr):
        return math.nan
    times = [line_time(t) for t in ocr_sample_times(duration, ocr, settings.frames)]
    return sampled_window_share(times, window_spans(duration, settings), settings.window_edges)


def window_sample_share(group: StageGroup) -> float:
    """Mean over the captions group's done videos of the share of windows holding an OCR
    sample (the `sample_share` array); NaN when no done video has one (kwai OCR, or none
    captioned yet). For the ablation table: `window_sample_share(groups.captions)`."""
    done = group.row_states()["done"]
    if "sample_share" not in set(group.group.array_keys()) or not done.any():
        return math.nan
    shares = group.group["sample_share"][:][np.flatnonzero(done)]  # done rows < n_rows
    shares = shares[shares >= 0]  # UNKNOWN_SHARE left out
    return float(shares.mean()) if len(shares) else math.nan


def _distinct_in_order(lines: list[Line], settings: CaptionSettings) -> list[str]:
    """Distinct texts (case-folded), in first-seen order: by time, then reading order. With
    `reading_order = "lines"` boxes whose vertical centres lie within half the lower box's
    height of each other are one line, read left to right ("top": by top edge, then left
    edge, earlier versions: a word one pixel higher, or a taller word beside a smaller one,
    was read first). With `merge_tracks` the lines of one track (an importer's track id)
    are one text, the one read with the best score (a track read two ways counted twice)."""
    if settings.merge_tracks:
        best: dict[int, tuple[float, str]] = {}
        for line in lines:
            if line.get("track", -1) >= 0:
                track, score = int(line["track"]), float(line["score"])
                if track not in best or score > best[track][0]:
                    best[track] = (score, line["text"])
        lines = [
            {**line, "text": best[int(line["track"])][1]} if line.get("track", -1) >= 0 else line
            for line in lines
        ]
    keyed = [(float(line["t"]), np.asarray(line["box"], dtype=float), line) for line in lines]
    rows = None
    if settings.reading_order == "lines":  # the lines of each time's boxes, apart
        rows = [0] * len(keyed)
        at_time: dict[float, list[int]] = {}
        for i, (t, _, _) in enumerate(keyed):
            at_time.setdefault(t, []).append(i)
        for members in at_time.values():
            for i, row in zip(members, _reading_rows([keyed[i][1] for i in members]), strict=True):
                rows[i] = row
    first: dict[str, tuple[float, float, float, str]] = {}
    for i, (t, box, line) in enumerate(keyed):
        text = normalise(line["text"])
        key = text.casefold()
        row = float(box[:, 1].min()) if rows is None else float(rows[i])
        order = (t, row, float(box[:, 0].min()), text)
        if key not in first or order < first[key]:
            first[key] = order
    return [item[3] for item in sorted(first.values())]


def _reading_rows(boxes: list[np.ndarray]) -> list[int]:
    """Per box, its line's rank top to bottom: boxes join a line while their vertical centre
    lies within half the smaller box's height of the line's last box."""
    spans = [(float(b[:, 1].min()), float(b[:, 1].max())) for b in boxes]
    order = sorted(range(len(boxes)), key=lambda i: sum(spans[i]) / 2)
    rows = [0] * len(boxes)
    row, last = -1, None
    for i in order:
        top, bottom = spans[i]
        centre, height = (top + bottom) / 2, bottom - top
        if last is None or abs(centre - last[0]) > min(height, last[1]) / 2:
            row += 1
        rows[i], last = row, (centre, height)
    return rows


def ocr_instances(lines: list[Line], settings: CaptionSettings) -> list[str]:
    """Distinct OCR words (case-folded), best score first, at most `max_instances`."""
    best: dict[str, tuple[float, str]] = {}
    for line in lines:
        if not line["score"] >= settings.min_score:  # (NaN is no score)
            continue
        for word in normalise(line["text"]).split(" "):
            if word and (word.casefold() not in best or line["score"] > best[word.casefold()][0]):
                best[word.casefold()] = (float(line["score"]), word)
    ranked = sorted(best.values(), key=lambda item: (-item[0], item[1]))
    return [word for _, word in ranked[: settings.max_instances]]


def fit_to_tokens(text: str, token_ends: Callable[[str], list[int]], limit: int) -> str:
    """Cut `text` to at most `limit` tokens, keeping whole words where it has spaces.

    `token_ends(text)` gives the character offset where each token of `text` ends (special
    tokens left out; `limit` is what is left for text after them). A text of one long word
    (CJK has no spaces) is cut inside it, at a token boundary, never emptied.
    """
    ends = token_ends(text)
    while len(ends) > limit > 0:
        # min(): several tokens can end at one offset (byte-level BPE on an emoji); each
        # round must shorten the text
        cut = text[: min(ends[limit - 1], len(text) - 1)].rstrip()
        if len(cut) < len(text) and not text[len(cut)].isspace() and " " in cut:
            cut = cut[: cut.rindex(" ")].rstrip()  # the last word does not fit whole: drop it
        text, ends = cut, token_ends(cut)  # re-tokenised: a cut can merge tokens differently
    return text if limit > 0 else ""


def run_captions(
    work: WorkDir,
    settings: CaptionSettings,
    ocr_settings: OcrSettings,
    retry_failed: bool = False,
    progress: bool = True,
    shard: Shard | None = None,
) -> StageReport:
    """Build window captions and instance lists for every pending video from cached OCR.

    Refused up front (`UpstreamError`, nothing recorded) while videos it would caption have
    no OCR for these settings; a video whose OCR failed fails here with that message."""
    groups = StageGroups.resolve(work, PipelineSettings(ocr=ocr_settings, captions=settings))
    ocr = Upstream(groups, "captions")
    ocr.require(retry_failed, shard)

    def produce(rows: np.ndarray, clock: StageClock) -> Iterator[tuple[int, Any]]:
        videos = work.manifest.videos.read(["duration", "error"])  # (under the manifest lock)
        for row in rows:
            if not ocr.has(row):
                continue  # OCR went missing since the check (a concurrent run): stays pending

            def compute(row: int = int(row)) -> dict[str, Any]:
                ocr.check(row)
                if videos["error"][row]:  # no duration to place the windows in (imported OCR
                    # reads no video): all empty, and done for good under the same key
                    raise VideoError(UNREADABLE_VIDEO + str(videos["error"][row]))
                lines = read_lines(ocr.group, row)
                duration = float(videos["duration"][row])
                with clock.computing():
                    captions, mask = window_captions(lines, duration, settings)
                    instances = ocr_instances(lines, settings)
                    share = video_sample_share(duration, ocr_settings, settings)
                return {
                    "captions": np.array(captions, dtype=str),
                    "mask": mask,
                    "instances": json.dumps(instances, ensure_ascii=False),
                    "sample_share": np.float32(share if share >= 0 else UNKNOWN_SHARE),
                }

            yield guarded(int(row), compute)

    arrays = {
        "captions": ((settings.frames,), str, ""),
        "mask": ((settings.frames,), "bool", False),
        "instances": ((), str, ""),
        "sample_share": ((), "float32", UNKNOWN_SHARE),
    }

    def figures() -> dict[str, float]:
        share = window_sample_share(groups.captions)
        return {"window_sample_share": round(share, 4)} if math.isfinite(share) else {}

    return run_stage(
        work, groups.captions, arrays, produce, retry_failed, progress, shard, figures,
        upstream=ocr,
    )  # fmt: skip
