"""`tcd data ...`: make a dataset (synthetic) or read one into a work directory's manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cache import WorkDir
from pipeline.datasets import read_folder, read_textvr
from pipeline.manifest import build_manifest
from pipeline.synth import SynthSettings, generate

app = typer.Typer(help="Create or read datasets into a work directory.", no_args_is_help=True)

Work = Annotated[Path, typer.Option("--work", "-w", help="Work directory (created if missing).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write the TextVR-layout set into.")],
    videos: Annotated[int, typer.Option(min=2, help="Number of videos.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed; the output is a function of it.")] = 0,
    with_ocr_json: Annotated[
        bool, typer.Option(help="Also write ground-truth OCR in Kwai_VideoOCR/ format.")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Parallel video writers.")] = 2,
    quiet: Quiet = False,
) -> None:
    """Generate the synthetic set: scene text + scene videos with queries needing both."""
    plans = generate(out, videos, seed, with_ocr_json, SynthSettings(), workers, not quiet)
    n_test = sum(p.split == "test" for p in plans)
    typer.echo(f"wrote {len(plans)} videos ({len(plans) - n_test} train, {n_test} test) to {out}")


@app.command("textvr")
def textvr(
    root: Annotated[Path, typer.Option(help="TextVR folder (TextVR_*.json, Video/).")],
    work: Work,
    split: Annotated[
        list[str] | None, typer.Option(help="Split(s) to read; default: every file present.")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Read TextVR annotations and videos into the manifest (incremental)."""
    dataset = read_textvr(root, tuple(split) if split else None)
    report = build_manifest(WorkDir(work, create=True), dataset, progress=not quiet)
    typer.echo(f"manifest {work}: {report}")


@app.command("folder")
def folder(
    videos: Annotated[Path, typer.Option(help="Folder of videos.")],
    captions: Annotated[
        Path, typer.Option(help="CSV/TSV/JSON table with columns video,caption,split.")
    ],
    work: Work,
    quiet: Quiet = False,
) -> None:
    """Read a plain folder of videos with a caption table into the manifest (incremental)."""
    dataset = read_folder(videos, captions)
    report = build_manifest(WorkDir(work, create=True), dataset, progress=not quiet)
    typer.echo(f"manifest {work}: {report}")
