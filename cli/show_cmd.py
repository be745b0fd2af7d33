"""`tcd show`: what the caches hold for one video (manifest row, per-stage state, OCR lines
over time, window captions with their spans and mask)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import Work, flag

VideoId = Annotated[
    str, typer.Argument(help="Video id as the manifest holds it, e.g. Cooking/clip_003.mp4.")
]
AsJson = Annotated[bool, flag("--json", help="Print JSON (what /api/videos/ID serves).")]


def show_command(work: Work, video: VideoId, as_json: AsJson = False) -> None:
    """Show one video: manifest row, stages done/failed/pending, OCR lines, window captions."""
    from cache import WorkDir
    from cli.video_details import format_details, video_details

    details = video_details(WorkDir(work), video)
    if as_json:
        typer.echo(json.dumps(details, indent=2, ensure_ascii=False))
    else:
        typer.echo(format_details(details))


def register(app: typer.Typer) -> None:
    app.command("show")(show_command)
