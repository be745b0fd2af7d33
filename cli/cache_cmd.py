"""`tcd cache ...`: inspect and tidy a work directory."""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated, Any

import typer

from cache import WorkDir
from cli.common import Work, flag, warn
from pipeline.settings import WORK_SETTINGS, StageGroups, resolve_settings
from pipeline.stage import last_run

_COLUMNS = ("stage", "key", "rows", "done", "stale", "failed", "pending", "removed", "warned")
_ROW = "{mark}{stage:<10} {key:<16} {rows:<8} {done:>6} {stale:>6} {failed:>6} "
_ROW += "{pending:>7} {removed:>7} {warned:>6}  {last_run}"


def status(
    work: Work,
    as_json: Annotated[bool, flag("--json", help="Print JSON instead of a table.")] = False,
    failed: Annotated[
        bool, flag("--failed", help="Also list every failed and warned row.")
    ] = False,
) -> None:
    """Videos and captions in the manifest; per stage group: rows done/stale/failed/pending,
    rows with a warning, and where the last run's time went."""
    store = WorkDir(work)
    saved = (store.path / WORK_SETTINGS).exists()
    settings = resolve_settings(store.path) if saved else None
    current = StageGroups.keys(settings) if settings else {}
    groups = StageGroups(store, settings) if settings else None
    # the current groups' rows are checked as their stages check them (imported OCR files)
    parts, unchecked = {}, set()
    for stage, key in current.items():
        parts[(stage, key)], why = groups.reported_part(stage)
        unchecked |= {why} - {""}
    for why in sorted(unchecked):
        warn(f"{why}: rows are checked against their videos alone")
    report = store.status(listed=failed, row_key_parts=parts)
    for group in report["stages"]:
        group["current"] = current.get(group["stage"]) == group["key"]
    typer.echo(json.dumps(report, indent=2) if as_json else status_table(report, bool(current)))


def status_table(report: dict[str, Any], marked: bool) -> str:
    """`tcd cache status` as text: the manifest's counts, then one row per stage group."""
    videos, captions, dataset = report["videos"], report["captions"], report["dataset"]
    splits = ", ".join(f"{k} {v}" for k, v in videos["by_split"].items()) or "none"
    lines = [
        f"work dir : {report['work']}",
        f"dataset  : {dataset.get('dataset', '?')} at {dataset.get('root', '?')}",
        f"videos   : {videos['present']} ({splits}); {videos['unreadable']} unreadable, "
        f"{videos['removed']} removed",
        f"captions : {captions['present']}; {captions['removed']} removed",
    ]
    if not report["stages"]:
        return "\n".join([*lines, "stages   : none computed yet"])
    lines.append(_ROW.format(mark="  ", last_run="last run", **{c: c for c in _COLUMNS}))
    for group in report["stages"]:
        mark = "* " if group["current"] else "  "
        run = last_run(group["reports"])
        lines.append(_ROW.format(mark=mark, warned=group["warnings"], last_run=run, **group))
    if marked:
        lines.append("* = used by the work dir's current settings (settings.toml)")
    return "\n".join([*lines, *_listed_rows(report)])


def _listed_rows(report: dict[str, Any]) -> list[str]:
    """Per group with failed rows, their count by error type (as the runs that failed them
    reported it), then one line per failed or warned row (`--failed`)."""
    lines = []
    for group in report["stages"]:
        where = f"{group['stage']} [{group['key']}] row"
        if group.get("failed_rows"):
            kinds: Counter[str] = Counter()
            for run in group["reports"].values():
                kinds.update(run.get("failures", {}))
            by_type = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
            lines.append(
                f"{group['stage']} [{group['key']}]: {len(group['failed_rows'])} failed"
                + (f" ({by_type} in the last run)" if by_type else "")
            )
        for row in group.get("failed_rows", []):
            lines.append(f"{where} {row['row']} ({row['id']}): {row['error']}")
        for row in group.get("warned_rows", []):
            lines.append(f"{where} {row['row']} ({row['id']}): warning: {row['warning']}")
    return lines


def gc(
    work: Work,
    dry_run: Annotated[bool, flag(help="Only report what would be cleared.")] = False,
) -> None:
    """Clear stage rows of videos/captions that left the manifest, and leftover temp files."""
    report = WorkDir(work).gc(dry_run=dry_run)
    verb = "would clear" if dry_run else "cleared"
    typer.echo(
        f"{verb} {report['rows_cleared']} row(s) in {report['groups']} group(s); "
        f"{report['partial_files']} partial file(s)"
    )


def register(app: typer.Typer) -> None:
    cache = typer.Typer(
        help="Inspect and maintain the cache of a work directory.", no_args_is_help=True
    )
    cache.command("status")(status)
    cache.command("gc")(gc)
    app.add_typer(cache, name="cache")
