"""A static, self-contained HTML report like the paper's qualitative figures.

For each query: the top videos with a strip of frame thumbnails, their window captions, the
three branch scores and the final score, the true video marked; then the metrics table and
the training curves. Images are embedded as base64, so the page opens without a server.
All text from videos and annotations is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image


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
    columns = ["R@1", "R@5", "R@10", "MdR", "MnR"]
    out.append("".join(f"<th>{c}</th>" for c in columns) + "</tr>")
    for name, values in metrics.items():
        cells = "".join(f"<td>{values[c]:.1f}</td>" for c in columns)
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
