"""`tcd data ...`: make a dataset (synthetic) or read one into a work directory's manifest.

The readers and generators (PyAV, Pillow) are imported inside the commands, so `tcd --help`
does not load them."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import Quiet, flag

if TYPE_CHECKING:
    from pipeline.datasets import Dataset

NewWork = Annotated[Path, typer.Option("--work", "-w", help="Work directory (created if missing).")]
Replace = Annotated[
    bool,
    flag(help="Replace the dataset the work dir holds (another kind or root)."),
]


class SynthProfile(StrEnum):
    """simple: one scene and one key text per video (fast tests); temporal: 2-4 shots of
    different scenes, dense text, overlays and labelled hard-negative families."""

    simple = "simple"
    temporal = "temporal"


def _read_into(work: Path, dataset: Dataset, replace: bool, quiet: bool) -> None:
    from cache import WorkDir
    from pipeline.manifest import build_manifest

    for reason in dataset.skipped:
        typer.echo(f"warning: skipped {reason}", err=True)
    report = build_manifest(WorkDir(work, create=True), dataset, not quiet, replace)
    typer.echo(f"manifest {work}: {report}")


def synth(
    out: Annotated[Path, typer.Option(help="Folder to write the TextVR-layout set into.")],
    videos: Annotated[int, typer.Option(min=2, help="Number of videos.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed; the output is a function of it.")] = 0,
    with_ocr_json: Annotated[
        bool, flag(help="Also write ground-truth OCR in Kwai_VideoOCR/ format.")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Parallel video writers.")] = 2,
    profile: Annotated[
        SynthProfile,
        typer.Option(
            help="simple: one scene and key text per video; temporal: 2-4 shots per video, "
            "dense text, overlays, hard-negative families (synth_groups.json)."
        ),
    ] = SynthProfile.simple,
    quiet: Quiet = False,
) -> None:
    """Generate the synthetic set: scene text + scene videos with queries needing both."""
    from pipeline import synth_temporal
    from pipeline.synth import SynthSettings, generate

    if profile is SynthProfile.temporal:
        plans: list = synth_temporal.generate(
            out, videos, seed, with_ocr_json, synth_temporal.TemporalSettings(), workers, not quiet
        )
    else:
        plans = generate(out, videos, seed, with_ocr_json, SynthSettings(), workers, not quiet)
    n_test = sum(p.split == "test" for p in plans)
    typer.echo(f"wrote {len(plans)} videos ({len(plans) - n_test} train, {n_test} test) to {out}")


def textvr(
    root: Annotated[Path, typer.Option(help="TextVR folder (TextVR_*.json, Video/).")],
    work: NewWork,
    split: Annotated[
        list[str] | None, typer.Option(help="Split(s) to read; default: every file present.")
    ] = None,
    replace: Replace = False,
    quiet: Quiet = False,
) -> None:
    """Read TextVR annotations and videos into the manifest (incremental)."""
    from pipeline.datasets import read_textvr

    _read_into(work, read_textvr(root, tuple(split) if split else None), replace, quiet)


class MsrvttSplit(StrEnum):
    """1k-a: the 9k (or 7k) training videos and the 1k-A test set, one sentence per video;
    full: the official train / validate (val) / test split of MSRVTT_data.json."""

    one_k_a = "1k-a"
    full = "full"


class MsrvttTrain(StrEnum):
    nine_k = "9k"
    seven_k = "7k"


def msrvtt(
    root: Annotated[
        Path,
        typer.Option(
            help="MSR-VTT folder in CLIP4Clip's layout: MSRVTT_data.json, MSRVTT_train.9k.csv, "
            "MSRVTT_JSFUSION_test.csv (at the root or in msrvtt_data/), MSRVTT_Videos/."
        ),
    ],
    work: NewWork,
    split: Annotated[
        MsrvttSplit,
        typer.Option(help="1k-a: 9k train + 1k-A test (one sentence per video); full: official."),
    ] = MsrvttSplit.one_k_a,
    train: Annotated[
        MsrvttTrain, typer.Option(help="1k-a only: the 9k or the 7k training list.")
    ] = MsrvttTrain.nine_k,
    replace: Replace = False,
    quiet: Quiet = False,
) -> None:
    """Read MSR-VTT annotations and videos into the manifest (incremental)."""
    from pipeline.datasets import read_msrvtt

    _read_into(work, read_msrvtt(root, split.value, train.value), replace, quiet)


def folder(
    videos: Annotated[Path, typer.Option(help="Folder of videos.")],
    work: NewWork,
    captions: Annotated[
        Path | None,
        typer.Option(
            help="CSV/TSV/JSON table with columns video,caption,split. Without it every video "
            "under the folder is read into split `all`, to search (zero-shot) rather than train."
        ),
    ] = None,
    replace: Replace = False,
    quiet: Quiet = False,
) -> None:
    """Read a plain folder of videos (with an optional caption table) into the manifest
    (incremental)."""
    from pipeline.datasets import read_folder

    _read_into(work, read_folder(videos, captions), replace, quiet)


def register(app: typer.Typer) -> None:
    data = typer.Typer(help="Create or read datasets into a work directory.", no_args_is_help=True)
    data.command("synth")(synth)
    data.command("textvr")(textvr)
    data.command("msrvtt")(msrvtt)
    data.command("folder")(folder)
    app.add_typer(data, name="data")
