"""`tcd train` and `tcd ablate`: train heads on cached features (heads/train.py, heads/ablate.py).

The heads, torch and the pipeline's stages are imported when a command runs, so `tcd --help`
and the light commands do not pay for them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cache import WorkDir
from cache.settings import load_settings
from cli.common import Budget, Work, feature_source, features, require_split, split_data_key
from heads.config import RunConfig

if TYPE_CHECKING:
    from heads.ablate import FeaturesFor
    from heads.data import Features
    from heads.run_dir import RunDir

RunConfigFile = Annotated[Path, typer.Option(help="Run config TOML (configs/tcd.toml, ...).")]
RunName = Annotated[str | None, typer.Option(help="Run name (default: the config's stem).")]
RunSet = Annotated[
    list[str] | None, typer.Option("--set", help="Override, e.g. train.epochs=5 (repeatable).")
]
Grid = Annotated[
    Path, typer.Option(help="TOML list of \\[\\[variant]] tables (name, config, set, pipeline).")
]
EvalSplit = Annotated[str, typer.Option(help="Split to score each variant on.")]
Seeds = Annotated[str, typer.Option(help="Comma-separated head-training seeds, e.g. 0,1,2.")]
AblateGroups = Annotated[
    str | None,
    typer.Option(
        "--groups",
        help="Add per-group t2v R@1 and pair accuracy: a JSON or CSV groups file, or `domain`.",
    ),
]
TablesOut = Annotated[
    Path | None,
    typer.Option(help="Markdown tables (default W/runs/ablations.md; .json beside it)."),
]


def show_epoch(record: dict[str, Any]) -> None:
    """One line per epoch: losses, validation, and HSC's diagnostics beside their baselines."""
    line = f"  epoch {record['epoch']:>3}  loss {record['loss']:.3f}  "
    if "val_r1" in record:
        line += f"val loss {record['val_loss']:.3f}  val R@1 {record['val_r1']:.1f}"
    else:
        line += "(no held-out captions)"
    if "hsc" in record:
        line += f"  hsc {record['hsc']:.4f} (uniform {record['hsc_uniform']:.4f})"
    if record.get("calib_frames"):
        line += f"  calib {record['calib_acc']:.2f} (chance {record['calib_chance']:.2f})"
    typer.echo(f"{line}  ({record['seconds']:.1f} s)")


def announce(name: str, config: RunConfig, data: Features) -> None:
    """What is about to be trained, and the videos left out for lack of features."""
    typer.echo(
        f"train {name}: {config.head.kind}, {data.n_videos} videos, {len(data.queries)} captions"
    )
    if data.missing:
        typer.echo(f"warning: {len(data.missing)} video(s) without features left out", err=True)


def say_what_training_replaces(
    run: RunDir, config: RunConfig, data: Features, data_key: str | None
) -> None:
    """Before `train` replaces what the run's folder holds: why (`RunDir.replaced_because`),
    and the eval metrics it drops."""
    reason = run.replaced_because(config, data.source, data_key)
    if reason:
        typer.echo(
            f"{reason}: it is trained again from the start (another --name keeps it)", err=True
        )
    if run.metrics_path.exists():
        typer.echo(
            f"{run.name} was evaluated before: training replaces its head, so its saved "
            "metrics are dropped (run tcd eval again)",
            err=True,
        )


def train_command(
    work: Work,
    config: RunConfigFile,
    name: RunName = None,
    set_: RunSet = None,
    memory_budget_gb: Budget = 8.0,
) -> None:
    """Train a head on the train split's cached features; writes W/runs/NAME/."""
    from heads.run_dir import RunDir
    from heads.train import train, trained_data

    run_config = load_settings(RunConfig, config, set_ or [])  # a bad value: before any work
    store = WorkDir(work)
    run = RunDir(store.path, name or config.stem)
    data_key = trained_data(run_config, split_data_key(store, "train"))
    best = run.finished(run_config, feature_source(store), data_key)
    if best is None:  # (a finished run needs no features: a rerun returns at once)
        data = features(store, "train", memory_budget_gb)
        announce(run.name, run_config, data)
        say_what_training_replaces(run, run_config, data, data_key)
        best = train(run_config, data, run, progress=show_epoch)
    else:
        typer.echo(f"{run.name}: already trained with this config")
    if best["epoch"] < 0:
        typer.echo(f"kept the initial head (train.epochs = 0: nothing trained); run in {run.path}")
    else:
        if "val_r1" not in best:
            chosen_by = f"lowest training loss {best['val_loss']:.3f}: no held-out captions"
        elif run_config.train.select == "r1":
            chosen_by = f"best val t2v R@1 {best['val_r1']:.1f}"
        else:
            chosen_by = f"lowest val loss {best['val_loss']:.3f}, val t2v R@1 {best['val_r1']:.1f}"
        typer.echo(f"best epoch {best['epoch']} ({chosen_by}); run in {run.path}")


def caption_features(store: WorkDir, split: str, memory_budget_gb: float) -> FeaturesFor:
    """`tcd ablate`'s features callback: for a variant's caption overrides, build those captions
    and their encodings (OCR and frame features are shared), then load the train and `split`
    features under them."""
    from pipeline.captions import run_captions
    from pipeline.encode import run_encode
    from pipeline.settings import resolve_settings

    def features_for(pipeline: tuple[str, ...]) -> tuple[Features, Features]:
        settings = resolve_settings(store.path, None, pipeline)
        if pipeline:
            typer.echo(f"captions for {' '.join(pipeline)}")
            reports = [run_captions(store, settings.captions, settings.ocr)]
            reports += run_encode(
                store, settings.encode, settings.captions, settings.ocr, workers=0
            )
            for report in reports:
                typer.echo(f"  {report}")
        return (
            features(store, "train", memory_budget_gb, settings),
            features(store, split, memory_budget_gb, settings),
        )

    return features_for


def ablate_command(
    work: Work,
    grid: Grid,
    split: EvalSplit = "test",
    seeds: Seeds = "0",
    out: TablesOut = None,
    set_: RunSet = None,
    memory_budget_gb: Budget = 8.0,
    groups: AblateGroups = None,
) -> None:
    """Train every variant (once per seed) over the same caches; tables of mean ± sd."""
    from heads.ablate import ablate
    from heads.groups import parse_groups

    spec = parse_groups(groups) if groups else None  # a malformed file fails before training
    store = WorkDir(work)
    require_split(store, split)  # (a mistyped one failed after the first variant's training)
    features_for = caption_features(store, split, memory_budget_gb)
    groups_for = None  # evaluation features -> their query groups
    if spec is not None:
        groups_for = partial(spec.resolve, manifest=store.manifest if spec.by_domain else None)
    study = ablate(
        store.path, grid, split, seeds, features_for, set_ or [], out, typer.echo, groups_for
    )
    typer.echo(study.tables)
    typer.echo(f"tables written to {study.tables_path} (per-seed results in {study.results_path})")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("ablate")(ablate_command)
