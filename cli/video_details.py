"""What the caches hold for one video, for `tcd show` and the served video page: its manifest
row, per stage whether its row is done, failed (with the message), stale, pending or removed
(the video left the manifest), its OCR lines over time and its window captions with their
spans and mask.

Read-only: a stage group that does not exist yet is reported as "not run", never created.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cache import WorkDir
from cache.errors import TcdError
from pipeline.captions import window_spans
from pipeline.ocr import read_lines
from pipeline.settings import PipelineSettings, StageGroups, resolve_settings

VIDEO_STAGES = ("ocr", "captions", "frames", "ocr_text")  # the stages with one row per video
MANIFEST_FIELDS = ("id", "split", "path", "domain", "duration", "fps", "n_frames", "present")


class UnknownVideo(TcdError):
    """No video of that id in the work dir's manifest."""


def video_row(store: WorkDir, video_id: str) -> int:
    """The manifest row of `video_id`; an unknown id is refused, naming how to list them."""
    row = store.manifest.videos.row_of().get(video_id)
    if row is None:
        raise UnknownVideo(
            f"no video {video_id!r} in {store.path}; `tcd cache status --work {store.path}` "
            "counts them, `tcd search` shows their ids"
        )
    return row


def stage_state(groups: StageGroups, stage: str, row: int, present: bool) -> dict:
    """{"state": done | failed | stale | pending | removed | not run, "message"?, "group"}:
    a video gone from the manifest (`present` false) is `removed`, never `pending` (no work
    is due for it), whether its rows are still there or `tcd cache gc` cleared them."""
    group = groups.find(stage)
    if group is None:
        return {"state": "not run", "group": StageGroups.keys(groups.settings)[stage]}
    group.row_key_part, _ = groups.reported_part(stage)  # (an import map moved away: its
    # rows are checked by their videos alone, as `tcd cache status` does)
    states = group.row_states()
    fallback = "pending" if present else "removed"
    state = next((name for name, mask in states.items() if mask[row]), fallback)
    out: dict[str, Any] = {"state": state, "group": group.key}
    if state == "failed" and row < group.n_rows:
        out["message"] = str(group.group["error"][row])
    return out


def video_details(
    store: WorkDir, video_id: str, settings: PipelineSettings | None = None
) -> dict[str, Any]:
    """Everything the caches hold about one video (see the module docstring), as plain JSON."""
    settings = settings or resolve_settings(store.path)
    groups = StageGroups.resolve(store, settings)
    row = video_row(store, video_id)
    videos = store.manifest.videos.read([*MANIFEST_FIELDS, "error"])
    manifest = {name: _plain(videos[name][row]) for name in MANIFEST_FIELDS}
    present = bool(manifest["present"])
    stages = {stage: stage_state(groups, stage, row, present) for stage in VIDEO_STAGES}
    lines: list[dict[str, Any]] = []
    if stages["ocr"]["state"] == "done":
        lines = sorted(read_lines(groups.find("ocr"), row), key=lambda line: line.get("t", 0.0))
    windows: list[dict[str, Any]] = []
    if stages["captions"]["state"] == "done":
        windows = _windows(groups, row, float(manifest["duration"]))
    return {
        "video": manifest,
        # the manifest's error (unreadable, missing, outside the root); "" if none
        "error": str(videos["error"][row]),
        "failed": {name: s["message"] for name, s in stages.items() if s["state"] == "failed"},
        "stages": stages,
        "ocr_lines": [_line(line) for line in lines],
        "windows": windows,
    }


def _windows(groups: StageGroups, row: int, duration: float) -> list[dict[str, Any]]:
    """The video's window captions with their spans (clipped to the video) and mask."""
    captions = groups.find("captions").group
    texts, mask = captions["captions"][row], captions["mask"][row]
    starts, ends = window_spans(duration, groups.settings.captions)
    return [
        {
            "index": i,
            "start": max(float(starts[i]), 0.0),
            "end": min(float(ends[i]), duration),
            "caption": str(texts[i]),
            "has_text": bool(mask[i]),
        }
        for i in range(len(texts))
    ]


def _line(line: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": str(line.get("text", "")),
        "score": float(line.get("score", 0.0)),
        "t": float(line.get("t", 0.0)),
        "box": line.get("box"),
    }


def _plain(value: Any) -> Any:
    """A numpy scalar as the JSON value it stands for."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_details(details: dict[str, Any]) -> str:
    """`tcd show` as text: manifest row, stages, OCR lines over time, window captions."""
    video = details["video"]
    out = [f"video    : {video['id']}"]
    out += [f"{name:<9}: {video[name]}" for name in MANIFEST_FIELDS[1:]]
    if details["error"]:
        out.append(f"error    : {details['error']}")
    out.append("stages   :")
    for stage, state in details["stages"].items():
        message = f": {state['message']}" if state.get("message") else ""
        out.append(f"  {stage:<9} {state['state']:<8} [{state['group']}]{message}")
    lines = details["ocr_lines"]
    out.append(f"OCR lines ({len(lines)}):")
    for line in lines:
        out.append(f"  {line['t']:7.2f} s  {line['score']:.2f}  {line['text']}")
    windows = details["windows"]
    out.append(f"window captions ({len(windows)}):")
    for window in windows:
        mark = " " if window["has_text"] else "-"
        span = f"{window['start']:6.2f}-{window['end']:6.2f} s"
        out.append(f"  {window['index']:>2} {mark} {span}  {window['caption']}")
    if windows:
        out.append("  (- = empty window, mask False)")
    return "\n".join(out)
