"""`tcd ocr`, `tcd caption`, `tcd encode`: the offline stages over a work directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cache import Shard, WorkDir
from pipeline.captions import run_captions
from pipeline.encode import run_encode
from pipeline.ocr import run_ocr
from pipeline.settings import PipelineSettings, resolve_settings, save_settings
from pipeline.stage import StageReport

Work = Annotated[Path, typer.Option("--work", "-w", help="Work directory (made by `tcd data`).")]
Config = Annotated[
    Path | None, typer.Option(help="TOML settings file (see configs/pipeline.toml).")
]
Set = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one setting, e.g. captions.xi=0.5 (repeatable)."),
]
Strict = Annotated[bool, typer.Option(help="Exit 2 when any video failed.")]
Retry = Annotated[bool, typer.Option(help="Also retry videos that failed before.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ShardOption = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="i/n: this worker takes rows r with r % n == i; start n workers, one per i.",
    ),
]
Decoder = Annotated[
    str, typer.Option(help="Frame decoder: auto (decord, PyAV fallback), decord or pyav.")
]


def _settings(
    work: Path, config: Path | None, sets: list[str] | None, extra: list[str]
) -> PipelineSettings:
    return resolve_settings(work, config, [*(sets or []), *extra])


def _shard(text: str | None) -> Shard | None:
    return Shard.parse(text) if text else None


def _finish(
    work: WorkDir, settings: PipelineSettings, reports: list[StageReport], strict: bool
) -> None:
    save_settings(work.path, settings)
    for report in reports:
        typer.echo(str(report))
        for message in report.errors[:5]:
            typer.echo(f"  failed: {message}", err=True)
        if len(report.errors) > 5:
            typer.echo(
                f"  ... and {len(report.errors) - 5} more (see `tcd cache status`)", err=True
            )
    if strict and any(r.failed for r in reports):
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command("ocr")
    def ocr(
        work: Work,
        engine: Annotated[
            str | None, typer.Option(help="rapidocr | paddleocr | kwai (sets ocr.engine).")
        ] = None,
        config: Config = None,
        set_: Set = None,
        batch_size: Annotated[int, typer.Option(min=1, help="Frames decoded per batch.")] = 8,
        decoder: Decoder = "auto",
        strict: Strict = False,
        retry_failed: Retry = False,
        quiet: Quiet = False,
        shard: ShardOption = None,
    ) -> None:
        """Spot scene text in sampled frames of every new or changed video."""
        store = WorkDir(work)
        settings = _settings(work, config, set_, [f"ocr.engine={engine}"] if engine else [])
        report = run_ocr(
            store, settings.ocr, batch_size, decoder, retry_failed, not quiet, _shard(shard)
        )
        _finish(store, settings, [report], strict)

    @app.command("caption")
    def caption(
        work: Work,
        config: Config = None,
        set_: Set = None,
        strict: Strict = False,
        retry_failed: Retry = False,
        quiet: Quiet = False,
        shard: ShardOption = None,
    ) -> None:
        """Aggregate cached OCR into T window captions (and the OCR word list) per video."""
        store = WorkDir(work)
        settings = _settings(work, config, set_, [])
        report = run_captions(
            store, settings.captions, settings.ocr, retry_failed, not quiet, _shard(shard)
        )
        _finish(store, settings, [report], strict)

    @app.command("encode")
    def encode(
        work: Work,
        vision_model: Annotated[
            str | None,
            typer.Option(help="CLIP id or dir, or clip-tiny-random (sets encode.vision_model)."),
        ] = None,
        text_model: Annotated[
            str | None, typer.Option(help="minilm, a CLIP id/dir or a sentence-transformers dir.")
        ] = None,
        config: Config = None,
        set_: Set = None,
        batch_size: Annotated[
            int,
            typer.Option(min=1, help="Images (T per video) or queries per forward pass."),
        ] = 64,
        workers: Annotated[int, typer.Option(min=0, help="Decoding worker processes.")] = min(
            4, os.cpu_count() or 1
        ),
        decoder: Decoder = "auto",
        strict: Strict = False,
        retry_failed: Retry = False,
        quiet: Quiet = False,
        shard: ShardOption = None,
    ) -> None:
        """Encode sampled frames, window captions, OCR words and queries with frozen models."""
        extra = [f"encode.vision_model={vision_model}"] if vision_model else []
        extra += [f"encode.text_model={text_model}"] if text_model else []
        store = WorkDir(work)
        settings = _settings(work, config, set_, extra)
        reports = run_encode(
            store,
            settings.encode,
            settings.captions,
            settings.ocr,
            batch_size,
            workers,
            decoder,
            retry_failed,
            not quiet,
            _shard(shard),
        )
        _finish(store, settings, reports, strict)
