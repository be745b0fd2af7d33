"""`tcd ocr`, `tcd caption`, `tcd encode` (and `tcd extract`, all three in one process): the
offline stages over a work directory.

Each command parses its options and calls one stage function (or, with `--executor ray`,
`pipeline.distributed.run_on_ray`); the stage modules are imported inside the commands, so
this module (and `tcd --help`) never imports torch or ray.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cache import Shard, TcdError, WorkDir
from cli.common import Config, Quiet, Set, Work, flag
from pipeline.settings import OcrEngine, PipelineSettings, resolve_settings, save_settings
from pipeline.stage import StageReport
from pipeline.video import Decoder


class Executor(StrEnum):
    """Where a stage's rows are computed."""

    local = "local"  # this process (or this `--shard` worker)
    ray = "ray"  # actors of a Ray cluster (`pipeline.distributed`)


Strict = Annotated[bool, flag(help="Exit 2 when any video failed.")]
Retry = Annotated[bool, flag(help="Also retry videos that failed before.")]
ShardOption = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="i/n: this worker takes rows r with r % n == i; start n workers, one per i.",
    ),
]
DecoderOption = Annotated[
    Decoder, typer.Option(help="Frame decoder: auto (decord, PyAV fallback), decord or pyav.")
]
Engine = Annotated[OcrEngine | None, typer.Option(help="OCR engine (sets ocr.engine).")]
VisionModel = Annotated[
    str | None,
    typer.Option(help="CLIP id or dir, or clip-tiny-random (sets encode.vision_model)."),
]
TextModel = Annotated[
    str | None, typer.Option(help="minilm, a CLIP id/dir or a sentence-transformers dir.")
]
Workers = Annotated[
    int,
    typer.Option(
        min=0,
        help="Decoding worker processes (0: the stage forks none, not even the frames "
        "group's cache writers on a GPU).",
    ),
]
OcrBatch = Annotated[int, typer.Option(min=1, help="Frames decoded per batch.")]
OcrThreads = Annotated[
    int,
    typer.Option(
        "--threads",
        min=1,
        help="inference threads per OCR process (onnxruntime's; paddleocr's cpu_threads; 1 "
        "reads fastest per core: add processes with --shard or --executor ray instead).",
    ),
]
EncodeBatch = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Images (T per video) or queries per forward pass (by default 512 on a GPU, "
        "64 on the CPU).",
        show_default=False,
    ),
]
ExecutorOption = Annotated[
    Executor, typer.Option(help="local: this process; ray: actors on a Ray cluster.")
]
RayAddress = Annotated[
    str | None,
    typer.Option(help="--executor ray: a running cluster's address (default: start a local Ray)."),
]
Actors = Annotated[
    int | None,
    typer.Option(min=1, help="--executor ray: actors (default: the cluster's CPUs, or GPUs)."),
]
ActorCpus = Annotated[
    float | None,
    typer.Option(min=0.01, help="--executor ray: CPUs per actor (default: all but one, shared)."),
]

RayTimeout = Annotated[
    float | None,
    typer.Option(
        min=1,
        help="--executor ray: seconds a stage may run before the run stops (its rows so far "
        "kept; rerun to resume); default: no limit.",
    ),
]


@dataclass(frozen=True)
class StageRun:
    """The options every stage command takes; `stage_command` adds them to its signature."""

    config: Path | None = None
    sets: list[str] | None = None
    strict: bool = False
    retry_failed: bool = False
    quiet: bool = False
    shard: str | None = None
    executor: Executor = Executor.local
    ray_address: str | None = None
    actors: int | None = None
    actor_cpus: float | None = None
    ray_timeout: float | None = None

    def open(self, work: Path, chosen: dict[str, str | None]) -> tuple[WorkDir, PipelineSettings]:
        """The work dir and its settings; `chosen`: `section.key` -> a value an option gave."""
        # as TOML strings: a model folder named `2024` or `2024-05-01` is a name, not a number
        given = {key: value for key, value in chosen.items() if value}
        extra = [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in given.items()]
        return WorkDir(work), resolve_settings(work, self.config, [*(self.sets or []), *extra])

    @property
    def parsed_shard(self) -> Shard | None:
        """The `--shard` this run takes, if any: `0/1` (a Slurm array of one task) is the
        whole stage, an unsharded run (its writer lock alone; `0/1` shares it only in a Ray
        task, under the coordinator's)."""
        shard = Shard.parse(self.shard) if self.shard else None
        return None if shard is not None and shard.count == 1 else shard

    @property
    def on_ray(self) -> bool:
        """Whether the stages run on Ray (refused with `--shard`: Ray splits the rows itself)."""
        if self.executor != Executor.ray:
            if self.ray_address or self.actors or self.actor_cpus or self.ray_timeout:
                raise TcdError(
                    "--ray-address, --actors, --actor-cpus and --ray-timeout need --executor ray"
                )
            return False
        if self.shard:
            raise TcdError(
                "--executor ray cannot take --shard: Ray splits the rows among its actors "
                "itself (use --shard i/n for Slurm array jobs, without --executor ray)"
            )
        return True

    def on_cluster(
        self,
        work: WorkDir,
        settings: PipelineSettings,
        stages: list[str],
        ocr_threads: int | None = None,
        **options: Any,
    ) -> list[StageReport]:
        """Run `stages` with `--executor ray`; `options`: decoder, batch sizes."""
        from pipeline.distributed import RayOptions, run_on_ray

        ray = RayOptions(
            self.ray_address, self.actors, self.actor_cpus, ocr_threads, self.ray_timeout
        )
        return run_on_ray(
            work, settings, stages, ray, retry_failed=self.retry_failed,
            progress=not self.quiet, **options,
        )  # fmt: skip


_RUN_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=option)
    for name, option, default in (
        ("config", Config, None),
        ("sets", Set, None),
        ("strict", Strict, False),
        ("retry_failed", Retry, False),
        ("quiet", Quiet, False),
        ("shard", ShardOption, None),
        ("executor", ExecutorOption, Executor.local),
        ("ray_address", RayAddress, None),
        ("actors", Actors, None),
        ("actor_cpus", ActorCpus, None),
        ("ray_timeout", RayTimeout, None),
    )
]


def stage_command(command: Callable[..., None]) -> Callable[..., None]:
    """`command(work, run: StageRun, ...)` as Typer sees it: `StageRun`'s fields as options."""
    own = inspect.signature(command, eval_str=True).parameters.values()

    @functools.wraps(command)
    def parsed(**options: Any) -> None:
        run = StageRun(**{p.name: options.pop(p.name) for p in _RUN_OPTIONS})
        command(run=run, **options)

    parameters = [p for p in own if p.name != "run"] + _RUN_OPTIONS
    parsed.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return parsed


def finish(
    work: WorkDir, settings: PipelineSettings, reports: list[StageReport], strict: bool
) -> None:
    """Save the settings the stages ran with, print each report (its failures by type, with
    one message of each type), and exit 2 under `--strict` when a row failed."""
    save_settings(work.path, settings)
    for report in reports:
        typer.echo(str(report))
        for kind, count in report.failures.items():
            typer.echo(f"  {count} x {kind}, e.g. {report.examples[kind]}", err=True)
        if report.failed:
            typer.echo(
                f"  (every failed row: `tcd cache status --work {work.path} --failed`)", err=True
            )
    if strict and any(r.failed for r in reports):
        raise typer.Exit(2)


def ocr(
    work: Work,
    run: StageRun,
    engine: Engine = None,
    batch_size: OcrBatch = 8,
    decoder: DecoderOption = Decoder.auto,
    threads: OcrThreads = 1,
) -> None:
    """Spot scene text in sampled frames of every new or changed video."""
    from pipeline.ocr import run_ocr

    store, settings = run.open(work, {"ocr.engine": engine})
    if run.on_ray:
        batch = {"ocr": batch_size}
        reports = run.on_cluster(
            store, settings, ["ocr"], threads, decoder=decoder, batch_sizes=batch
        )
    else:
        shard = run.parsed_shard
        reports = [
            run_ocr(
                store, settings.ocr, batch_size, decoder, run.retry_failed, not run.quiet, shard,
                captions=settings.captions, threads=threads,
            )
        ]  # fmt: skip
    finish(store, settings, reports, run.strict)


def caption(work: Work, run: StageRun) -> None:
    """Aggregate cached OCR into T window captions (and the OCR word list) per video."""
    from pipeline.captions import run_captions

    store, settings = run.open(work, {})
    if run.on_ray:
        reports = run.on_cluster(store, settings, ["caption"])
    else:
        captions, ocr, shard = settings.captions, settings.ocr, run.parsed_shard
        reports = [run_captions(store, captions, ocr, run.retry_failed, not run.quiet, shard)]
    finish(store, settings, reports, run.strict)


def encode(
    work: Work,
    run: StageRun,
    vision_model: VisionModel = None,
    text_model: TextModel = None,
    workers: Workers = min(4, os.cpu_count() or 1),
    decoder: DecoderOption = Decoder.auto,
    batch_size: EncodeBatch = None,
) -> None:
    """Encode sampled frames, window captions, OCR words and queries with frozen models."""
    from pipeline.encode import run_encode

    chosen = {"encode.vision_model": vision_model, "encode.text_model": text_model}
    store, settings = run.open(work, chosen)
    if run.on_ray:  # actors decode frames themselves: --workers is for a local run
        batch = {"encode": batch_size}
        reports = run.on_cluster(store, settings, ["encode"], decoder=decoder, batch_sizes=batch)
    else:
        reports = run_encode(
            store, settings.encode, settings.captions, settings.ocr, batch_size, workers, decoder,
            run.retry_failed, not run.quiet, run.parsed_shard,
        )  # fmt: skip
    finish(store, settings, reports, run.strict)


def extract(
    work: Work,
    run: StageRun,
    engine: Engine = None,
    vision_model: VisionModel = None,
    text_model: TextModel = None,
    workers: Workers = min(4, os.cpu_count() or 1),
    decoder: DecoderOption = Decoder.auto,
    threads: OcrThreads = 1,
) -> None:
    """ocr, caption and encode in one process: each model loads once, and only for a stage
    with rows to compute."""
    from pipeline.extract import run_extract

    chosen = {"ocr.engine": engine, "encode.vision_model": vision_model}
    store, settings = run.open(work, {**chosen, "encode.text_model": text_model})
    if run.on_ray:
        stages = ["ocr", "caption", "encode"]
        reports = run.on_cluster(store, settings, stages, threads, decoder=decoder)
    else:
        reports = run_extract(
            store, settings, workers, decoder, threads,
            retry_failed=run.retry_failed, progress=not run.quiet, shard=run.parsed_shard,
        )  # fmt: skip
    finish(store, settings, reports, run.strict)


def register(app: typer.Typer) -> None:
    app.command("extract")(stage_command(extract))
    app.command("ocr")(stage_command(ocr))
    app.command("caption")(stage_command(caption))
    app.command("encode")(stage_command(encode))
