"""A static, self-contained HTML report like the paper's qualitative figures.

For each query: the top videos with a strip of frame thumbnails, the window caption that best
matches the query (its words marked) with the window's time span, the three branch scores and
the final score, the true video outlined, or its rank and score when it is not among them;
then the metrics table and the run's own training curves. Videos without features (a stage
failed for them) are never among a query's results; a query whose true video is one of them is
marked with the stage and its message (`NoFeatures`, gathered by the CLI). Images are embedded
as base64, so the page opens without a server. All text from videos and annotations is
HTML-escaped. Frames come from a `Thumbnails` callable (the CLI decodes them; retrieval never
imports `pipeline`).
"""

from __future__ import annotations

import base64
import functools
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from cache.atomic import atomic_write
from heads.metrics import METRICS, check_finite, t2v_metrics, tie_averaged_ranks, v2t_metrics
from heads.scoring import score_matrix
from retrieval.run_split import RunSplit
from retrieval.search import branch_scores, closest_windows

Thumbnails = Callable[[int], list[np.ndarray]]  # manifest row -> uint8 RGB frames ([] if none)

ZERO_SHOT_KIND = "zero-shot"  # heads.config.HeadKind of a run with nothing trained
WORD = re.compile(r"\w+")
# words of a query too common to mark in a caption
STOPWORDS = frozenset("a an and are as at be by for from in is it of on or the to with".split())


@dataclass(frozen=True)
class NoFeatures:
    """Why a video has no features: the first stage that failed for it, with its message, or
    else the first stage not done for it (state pending, stale, not run, ...)."""

    stage: str
    state: str
    message: str = ""

    def describe(self) -> str:
        """E.g. "failed: ocr: not valid OCR JSON" (said of the true video)."""
        if self.state == "failed":
            return f"failed: {self.stage}: {self.message}"
        return f"has no features: {self.stage} {self.state}" + (
            f": {self.message}" if self.message else ""
        )


@dataclass
class Hit:
    video: str
    score: float
    branches: dict[str, float]
    captions: list[str]  # every window's caption
    thumbnails: list[np.ndarray] = field(default_factory=list)  # uint8 RGB frames
    true: bool = False
    caption: str = ""  # the window caption closest to the query ("" when no scene text)
    start: float | None = None  # that window's span, seconds (None when unknown)
    end: float | None = None


@dataclass
class QueryResult:
    query: str
    true_video: str
    hits: list[Hit]
    # 1-based among the videos with features, ties averaged as `tcd eval` ranks (None: it
    # has none); true_ties: how many other videos score exactly as it does
    true_rank: float | None = None
    true_ties: int = 0
    true_score: float | None = None
    true_missing: NoFeatures | None = None  # why the true video has no features


def image_data_uri(image: np.ndarray | Image.Image, width: int = 160, fmt: str = "JPEG") -> str:
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    img = img.convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)))
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, quality=80)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def query_words(query: str) -> set[str]:
    """The query's words worth marking in a caption (case-folded, common words left out)."""
    return {w for w in (m.casefold() for m in WORD.findall(query)) if w not in STOPWORDS}


def highlight(text: str, words: set[str]) -> str:
    """`text` HTML-escaped, each of its words found in `words` (case-insensitive) wrapped in
    <mark>. Every piece is escaped before any tag is added, so the text cannot inject markup."""
    out, last = [], 0
    for match in WORD.finditer(text):
        word = escape(match.group())
        out.append(escape(text[last : match.start()]))
        out.append(f"<mark>{word}</mark>" if match.group().casefold() in words else word)
        last = match.end()
    out.append(escape(text[last:]))
    return "".join(out)


def time_span(start: float | None, end: float | None) -> str:
    """A window's span as the page shows it, e.g. "4.0–8.0 s"; "" when unknown."""
    return "" if start is None or end is None else f"{start:.1f}–{end:.1f} s"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table.metrics{border-collapse:collapse}
table.metrics td,table.metrics th{border:1px solid #ccc;padding:4px 10px;text-align:right}
.query{margin:2em 0;border-top:2px solid #888;padding-top:1em}
.hit{display:flex;gap:1em;align-items:flex-start;padding:.5em;margin:.3em 0;border:1px solid #ddd}
.hit.true{border:3px solid #2a2;background:#f3fff3}
.strip img{height:72px;margin-right:2px}.scores{font-family:monospace;min-width:17em}
.captions{font-size:.85em;color:#444}.best{margin:.3em 0}.span{color:#666;font-size:.85em}
.failed{color:#a00;font-weight:bold}.note{color:#666}
mark{background:#ffe066}
"""


def render_report(
    title: str,
    results: list[QueryResult],
    metrics: dict[str, dict[str, float]],
    curves_png: Path | None = None,
    *,
    zero_shot: bool = False,
    notes: list[str] | None = None,
) -> str:
    """The whole page as a string. `zero_shot`: the run trained nothing (so it has no curves);
    `notes`: lines shown under the metrics table."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"]
    out.append(f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>")
    out.append("<h2>Metrics</h2><table class='metrics'><tr><th></th>")
    out.append("".join(f"<th>{c}</th>" for c in METRICS) + "</tr>")
    for name, values in metrics.items():
        cells = "".join(f"<td>{values[c]:.1f}</td>" for c in METRICS)
        out.append(f"<tr><th>{escape(name)}</th>{cells}</tr>")
    out.append("</table>")
    out += [f"<p class='note'>{escape(note)}</p>" for note in notes or []]
    out.append("<h2>Training curves</h2>")
    if curves_png is not None and curves_png.exists():
        curves = image_data_uri(Image.open(curves_png), 600, "PNG")
        out.append(f"<img alt='training curves' src='{curves}'>")
    elif zero_shot:
        out.append("<p class='note'>no training curves (zero-shot run)</p>")
    else:
        out.append("<p class='note'>no training curves (the run folder has no curves.png)</p>")
    out.append("<h2>Queries</h2>")
    for result in results:
        out.append(render_query(result))
    out.append("</body></html>")
    return "\n".join(out)


def render_query(result: QueryResult) -> str:
    """One query: its true video (marked when it failed, ranked when not shown) and its hits."""
    true_video = f"<code>{escape(result.true_video)}</code>"
    out = [f"<div class='query'><h3>{escape(result.query)}</h3>"]
    if result.true_missing is not None:
        why = escape(result.true_missing.describe())
        out.append(f"<p class='failed'>true video {why} ({true_video}; not scored)</p>")
    elif any(hit.true for hit in result.hits):
        out.append(f"<p>true video: {true_video} (outlined{_ties(result)})</p>")
    elif result.true_rank is not None:
        score = f"S {result.true_score:+.3f}" if result.true_score is not None else ""
        out.append(
            f"<p>true video: {true_video}, not in the top {len(result.hits)}: "
            f"true video at rank {result.true_rank:g}, {score}{_ties(result)}</p>"
        )
    else:
        out.append(f"<p>true video: {true_video}</p>")
    words = query_words(result.query)
    for rank, hit in enumerate(result.hits, 1):
        out.append(render_hit(rank, hit, words))
    if not result.hits:
        out.append("<p class='note'>no video with features to show</p>")
    out.append("</div>")
    return "\n".join(out)


def _ties(result: QueryResult) -> str:
    """What a tie does to the true video's rank, as the metrics count it ('' without one)."""
    if not result.true_ties:
        return ""
    return (
        f"; tied with {result.true_ties} other video(s): rank {result.true_rank:g} as "
        "tcd eval counts it"
    )


def rank_among(scores: np.ndarray, candidates: np.ndarray, video: int) -> tuple[float, int]:
    """`video`'s 1-based rank by `scores` among `candidates`, ties averaged (`tcd eval`'s
    rule, `heads.metrics.tie_averaged_ranks`), and how many other candidates tie with it."""
    row = np.asarray(scores)[candidates][None, :]
    position = int(np.flatnonzero(candidates == video)[0])
    rank = float(tie_averaged_ranks(row, np.array([position]))[0])
    return rank, int((row[0] == row[0, position]).sum()) - 1


def render_hit(rank: int, hit: Hit, words: set[str]) -> str:
    """One ranked video: scores, frames, the best window caption (query words marked) and its
    span, then every window's caption folded away."""
    strip = "".join(f"<img alt='frame' src='{image_data_uri(t)}'>" for t in hit.thumbnails)
    branches = " ".join(f"S_{escape(k)} {v:+.3f}" for k, v in hit.branches.items())
    if hit.caption:
        span = time_span(hit.start, hit.end)
        when = f" <span class='span'>({escape(span)})</span>" if span else ""
        best = f"<div class='best'>{highlight(hit.caption, words)}{when}</div>"
    else:
        best = "<div class='best'><i>no scene text</i></div>"
    shown = [c for c in hit.captions if c]
    captions = (
        f"<details class='captions'><summary>all {len(shown)} window captions</summary>"
        f"{escape(' | '.join(shown))}</details>"
        if shown
        else ""
    )
    marker = " (true video)" if hit.true else ""
    css = "hit true" if hit.true else "hit"
    return (
        f"<div class='{css}'><div class='scores'>#{rank} S {hit.score:+.3f}{marker}<br>"
        f"{branches}<br><code>{escape(hit.video)}</code></div>"
        f"<div><div class='strip'>{strip}</div>{best}{captions}</div></div>"
    )


def query_results(
    split: RunSplit,
    sim: np.ndarray,
    thumbnails: Thumbnails,
    *,
    queries: int = 12,
    top: int = 5,
    no_features: Mapping[str, NoFeatures] | None = None,
) -> list[QueryResult]:
    """The `top` videos of the first `queries` captions among the videos with features, with
    branch scores, window captions (the one closest to the query with its span) and frames
    (each video decoded once however often it appears); the true video's rank and score, or
    why it has no features (`no_features`, by video id; a missing id gets a generic reason)."""
    data = split.features
    no_features = no_features or {}
    frames_of = functools.cache(thumbnails)
    missing = set(data.missing)
    searchable = np.array([v not in missing for v in data.video_ids], dtype=bool)
    candidates = np.flatnonzero(searchable)
    rows = np.asarray(data.rows)
    results = []
    for q in range(min(queries, len(data.queries))):
        ranked = candidates[np.argsort(-sim[q, candidates], kind="stable")]
        order = ranked[:top]
        true_video = int(data.query_video[q])
        true_id = data.video_ids[true_video]
        result = QueryResult(data.query_text[q], true_id, [])
        if searchable[true_video]:
            result.true_rank, result.true_ties = rank_among(sim[q], candidates, true_video)
            result.true_score = float(sim[q, true_video])
        else:
            result.true_missing = no_features.get(true_id, NoFeatures("features", "missing"))
        if len(order):
            query = data.queries[q : q + 1]
            branches = branch_scores(split.head, query, data, order)
            windows = split.windows(rows[order])
            best = closest_windows(data, order, query)
            result.hits = [
                Hit(
                    data.video_ids[v],
                    float(sim[q, v]),
                    {name: float(values[i]) for name, values in branches.items()},
                    [str(t) for t in windows.texts[i]],
                    frames_of(int(rows[v])),
                    bool(v == true_video),
                    str(windows.texts[i, best[i]]) if best[i] >= 0 else "",
                    _at(windows.starts, i, best[i]),
                    _at(windows.ends, i, best[i]),
                )
                for i, v in enumerate(order)
            ]
        results.append(result)
    return results


def _at(times: np.ndarray | None, video: int, window: int) -> float | None:
    return float(times[video, window]) if times is not None and window >= 0 else None


def write_report(
    path: Path,
    split: RunSplit,
    thumbnails: Thumbnails,
    *,
    queries: int = 12,
    top: int = 5,
    no_features: Mapping[str, NoFeatures] | None = None,
) -> int:
    """Score the split exactly and write the page; returns how many queries it shows.
    `no_features`: why each video without features has none (from the CLI's caches)."""
    data = split.features
    sim = score_matrix(split.head, data)
    check_finite(sim, f"the scores of run {split.run.name} on {split.split}")
    metrics = {
        "t2v": t2v_metrics(sim, data.query_video),
        "v2t": v2t_metrics(sim, data.query_video),
    }
    results = query_results(
        split, sim, thumbnails, queries=queries, top=top, no_features=no_features
    )
    title = f"{split.run.name} on {split.split} ({split.run.work})"
    zero_shot = split.run.config().head.kind == ZERO_SHOT_KIND
    page = render_report(
        title, results, metrics, split.run.curves, zero_shot=zero_shot, notes=_notes(split)
    )
    atomic_write(path, page)
    return len(results)


def _notes(split: RunSplit) -> list[str]:
    """What the metrics count that the results leave out: videos without features."""
    data = split.features
    if not data.missing:
        return []
    missing = set(data.missing)
    queries = sum(data.video_ids[v] in missing for v in data.query_video)
    return [
        f"{len(missing)} video(s) of {data.n_videos} have no features (a stage failed or did "
        f"not run): the metrics score them as zeros, as `tcd eval` does; they never appear "
        f"among the results below, and {queries} of {len(data.query_video)} queries have one "
        "as their true video"
    ]
