"""A static, self-contained HTML report like the paper's qualitative figures.

For each query: the top videos with a strip of frame thumbnails, their window captions, the
three branch scores and the final score, the true video marked; then the metrics table and
the training curves. Images are embedded as base64, so the page opens without a server.
All text from videos and annotations is HTML-escaped. Frames come from a `Thumbnails`
callable (the CLI decodes them; retrieval never imports `pipeline`).
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from cache.atomic import atomic_write
from heads.metrics import METRICS, check_finite, t2v_metrics, v2t_metrics
from heads.scoring import score_matrix
from retrieval.run_split import RunSplit
from retrieval.search import branch_scores

Thumbnails = Callable[[int], list[np.ndarray]]  # manifest row -> uint8 RGB frames ([] if none)


@dataclass
class Hit:
    video: str
    score: float
    branches: dict[str, float]
    captions: list[str]
    thumbnails: list[np.ndarray] = field(default_factory=list)  # uint8 RGB frames
    true: bool = False


@dataclass
class QueryResult:
    query: str
    true_video: str
    hits: list[Hit]


def image_data_uri(image: np.ndarray | Image.Image, width: int = 160, fmt: str = "JPEG") -> str:
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    img = img.convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)))
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, quality=80)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table.metrics{border-collapse:collapse}
table.metrics td,table.metrics th{border:1px solid #ccc;padding:4px 10px;text-align:right}
.query{margin:2em 0;border-top:2px solid #888;padding-top:1em}
.hit{display:flex;gap:1em;align-items:flex-start;padding:.5em;margin:.3em 0;border:1px solid #ddd}
.hit.true{border:3px solid #2a2;background:#f3fff3}
.strip img{height:72px;margin-right:2px}.scores{font-family:monospace;min-width:17em}
.captions{font-size:.85em;color:#444}
"""


def render_report(
    title: str,
    results: list[QueryResult],
    metrics: dict[str, dict[str, float]],
    curves_png: Path | None = None,
) -> str:
    """The whole page as a string."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"]
    out.append(f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>")
    out.append("<h2>Metrics</h2><table class='metrics'><tr><th></th>")
    out.append("".join(f"<th>{c}</th>" for c in METRICS) + "</tr>")
    for name, values in metrics.items():
        cells = "".join(f"<td>{values[c]:.1f}</td>" for c in METRICS)
        out.append(f"<tr><th>{escape(name)}</th>{cells}</tr>")
    out.append("</table>")
    if curves_png is not None and curves_png.exists():
        out.append("<h2>Training curves</h2>")
        curves = image_data_uri(Image.open(curves_png), 600, "PNG")
        out.append(f"<img alt='training curves' src='{curves}'>")
    out.append("<h2>Queries</h2>")
    for result in results:
        out.append(f"<div class='query'><h3>{escape(result.query)}</h3>")
        out.append(f"<p>true video: <code>{escape(result.true_video)}</code></p>")
        for rank, hit in enumerate(result.hits, 1):
            strip = "".join(f"<img alt='frame' src='{image_data_uri(t)}'>" for t in hit.thumbnails)
            branches = " ".join(f"S_{escape(k)} {v:+.3f}" for k, v in hit.branches.items())
            captions = escape(" | ".join(c for c in hit.captions if c)) or "<i>no scene text</i>"
            marker = " (true video)" if hit.true else ""
            css = "hit true" if hit.true else "hit"
            out.append(
                f"<div class='{css}'><div class='scores'>#{rank} S {hit.score:+.3f}{marker}<br>"
                f"{branches}<br><code>{escape(hit.video)}</code></div>"
                f"<div><div class='strip'>{strip}</div>"
                f"<div class='captions'>{captions}</div></div></div>"
            )
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def query_results(
    split: RunSplit, sim: np.ndarray, thumbnails: Thumbnails, *, queries: int = 12, top: int = 5
) -> list[QueryResult]:
    """The `top` videos of the first `queries` captions, with branch scores, window captions
    and frames (each video decoded once however often it appears)."""
    data = split.features
    frames_of = functools.cache(thumbnails)
    results = []
    for q in range(min(queries, len(data.queries))):
        order = np.argsort(-sim[q], kind="stable")[:top]
        branches = branch_scores(split.head, data.queries[q : q + 1], data, order)
        texts = split.windows(np.asarray(data.rows)[order]).texts
        hits = [
            Hit(
                data.video_ids[v],
                float(sim[q, v]),
                {name: float(values[i]) for name, values in branches.items()},
                [str(t) for t in texts[i]],
                frames_of(int(data.rows[v])),
                bool(v == data.query_video[q]),
            )
            for i, v in enumerate(order)
        ]
        results.append(QueryResult(data.query_text[q], data.video_ids[data.query_video[q]], hits))
    return results


def write_report(
    path: Path, split: RunSplit, thumbnails: Thumbnails, *, queries: int = 12, top: int = 5
) -> int:
    """Score the split exactly and write the page; returns how many queries it shows."""
    data = split.features
    sim = score_matrix(split.head, data)
    check_finite(sim, f"the scores of run {split.run.name} on {split.split}")
    metrics = {
        "t2v": t2v_metrics(sim, data.query_video),
        "v2t": v2t_metrics(sim, data.query_video),
    }
    results = query_results(split, sim, thumbnails, queries=queries, top=top)
    title = f"{split.run.name} on {split.split} ({split.run.work})"
    atomic_write(path, render_report(title, results, metrics, split.run.curves))
    return len(results)
