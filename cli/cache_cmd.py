"""`tcd cache ...`: inspect and tidy a work directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cache import WorkDir
from pipeline.settings import WORK_SETTINGS, StageGroups, resolve_settings

app = typer.Typer(help="Inspect and maintain the cache of a work directory.", no_args_is_help=True)

_COLUMNS = ("stage", "key", "rows", "done", "stale", "failed", "pending", "removed")
Work = Annotated[Path, typer.Option("--work", "-w", help="Work directory.")]


@app.command("status")
def status(
    work: Work,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Videos and captions in the manifest; per stage group: rows done/stale/failed/pending."""
    store = WorkDir(work)
    report = store.status()
    current = (
        StageGroups.keys(resolve_settings(store.path))
        if (store.path / WORK_SETTINGS).exists()
        else {}
    )
    for group in report["stages"]:
        group["current"] = current.get(group["stage"]) == group["key"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    videos, captions = report["videos"], report["captions"]
    dataset = report["dataset"]
    typer.echo(f"work dir : {report['work']}")
    typer.echo(f"dataset  : {dataset.get('dataset', '?')} at {dataset.get('root', '?')}")
    splits = ", ".join(f"{k} {v}" for k, v in videos["by_split"].items()) or "none"
    typer.echo(
        f"videos   : {videos['present']} ({splits}); {videos['unreadable']} unreadable, "
        f"{videos['removed']} removed"
    )
    typer.echo(f"captions : {captions['present']}; {captions['removed']} removed")
    if not report["stages"]:
        typer.echo("stages   : none computed yet")
        return
    row = "{mark}{stage:<10} {key:<16} {rows:<8} {done:>6} {stale:>6} {failed:>6} "
    row += "{pending:>7} {removed:>7}"
    typer.echo(row.format(mark="  ", **{name: name for name in _COLUMNS}))
    for group in report["stages"]:
        typer.echo(row.format(mark="* " if group["current"] else "  ", **group))
    if current:
        typer.echo("* = used by the work dir's current settings (settings.toml)")


@app.command("gc")
def gc(
    work: Work,
    dry_run: Annotated[bool, typer.Option(help="Only report what would be cleared.")] = False,
) -> None:
    """Clear stage rows of videos/captions that left the manifest, and leftover temp files."""
    report = WorkDir(work).gc(dry_run=dry_run)
    verb = "would clear" if dry_run else "cleared"
    typer.echo(
        f"{verb} {report['rows_cleared']} row(s) in {report['groups']} group(s); "
        f"{report['partial_files']} partial file(s)"
    )
