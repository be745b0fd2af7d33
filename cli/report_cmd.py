"""`tcd report` and `tcd export`: an HTML page of a run's results, features to HDF5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cache import WorkDir
from cli.common import Run, Split, Work, features
from retrieval.choices import ExportFormat

Format = Annotated[ExportFormat, typer.Option("--format", help="h5 (HDF5).")]
ExportRun = Annotated[
    str | None,
    typer.Option(help="Also export this run's video embeddings (a name, a path, or zero-shot)."),
]


def report_command(
    work: Work,
    run: Run,
    out: Annotated[Path, typer.Option(help="HTML file to write.")],
    split: Split = "test",
    queries: Annotated[int, typer.Option(min=1, help="Queries to show.")] = 12,
    top: Annotated[int, typer.Option(min=1, help="Videos per query.")] = 5,
) -> None:
    """Write a self-contained HTML page: top videos per query with frames, the best-matching
    window caption and its span, scores; the true video's rank, or why it has no features."""
    from cli.retrieval_wiring import no_features, open_split, thumbnails
    from retrieval.report import write_report

    scored = open_split(work, run, split, need_queries=True)
    why = no_features(work, scored.features)
    shown = write_report(out, scored, thumbnails(work), queries=queries, top=top, no_features=why)
    typer.echo(f"report of {shown} queries -> {out}")


def export_command(
    work: Work,
    out: Annotated[Path, typer.Option(help="Output file.")],
    format_: Format = ExportFormat.h5,
    run: ExportRun = None,
) -> None:
    """Export cached features (and a run's video embeddings) for other tools."""
    from cli.retrieval_wiring import named_run, ready_run, window_lookup
    from pipeline.settings import resolve_settings
    from retrieval.export import export_splits

    store = WorkDir(work)
    names = sorted(store.status()["videos"]["by_split"])
    run_dir = None
    if run and names:  # as search names it (a path, zero-shot), checked before any export
        run_dir, foreign = named_run(store, run, resolve_settings(store.path))
        ready_run(run_dir, run, foreign, features(store, names[0]))
    sizes = export_splits(out, names, lambda s: features(store, s), window_lookup(store), run_dir)
    listed = ", ".join(f"{split} ({n} videos)" for split, n in sizes.items())
    typer.echo(f"exported {listed} -> {out}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
    app.command("export")(export_command)
