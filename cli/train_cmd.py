"""`tcd train` and `tcd ablate`: train heads on cached features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cache import WorkDir
from cache.settings import load_settings
from heads.ablate import markdown_table, read_grid, run_grid
from heads.data import Features, load_features
from heads.train import RunConfig, load_head, score_matrix, train
from pipeline.captions import caption_group
from pipeline.encode import frame_group, ocr_text_group, query_group
from pipeline.ocr import ocr_group
from pipeline.settings import resolve_settings
from retrieval.metrics import t2v_metrics, v2t_metrics

Work = Annotated[Path, typer.Option("--work", "-w", help="Work directory with encoded features.")]
Budget = Annotated[
    float, typer.Option(help="Above this many GB of features, memory-map them instead.")
]
Set = Annotated[
    list[str] | None, typer.Option("--set", help="Override, e.g. train.epochs=5 (repeatable).")
]


def features(work: WorkDir, split: str, memory_budget_gb: float = 8.0) -> Features:
    """The split's cached features for the work dir's current pipeline settings.

    Above the memory budget they are memory-mapped from `W/tmp/features/`.
    """
    settings = resolve_settings(work.path)
    captions = caption_group(work, settings.captions, ocr_group(work, settings.ocr))
    groups = (
        frame_group(work, settings.encode, settings.captions),
        ocr_text_group(work, settings.encode, captions),
        query_group(work, settings.encode),
    )
    spill = work.path / "tmp" / "features"
    return load_features(work.manifest, *groups, split, memory_budget_gb * 1e9, spill)


def evaluate(run_dir: Path, data: Features) -> dict[str, float]:
    head, _ = load_head(run_dir, data.frames.shape[-1], data.queries.shape[-1])
    sim = score_matrix(head, data)
    return {
        **t2v_metrics(sim, data.query_video),
        **{f"v2t_{k}": v for k, v in v2t_metrics(sim, data.query_video).items()},
        "params": sum(p.numel() for p in head.parameters()),
    }


def _train_one(work: WorkDir, name: str, config: RunConfig, train_data: Features) -> dict:
    def show(record: dict) -> None:
        typer.echo(
            f"  epoch {record['epoch']:>3}  loss {record['loss']:.3f}  "
            f"val R@1 {record['val_r1']:.1f}  ({record['seconds']:.1f} s)"
        )

    size = f"{train_data.n_videos} videos, {len(train_data.queries)} captions"
    typer.echo(f"train {name}: {config.head.kind}, {size}")
    return train(config, train_data, work.path / "runs" / name, progress=show)


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        work: Work,
        config: Annotated[Path, typer.Option(help="Run config TOML (configs/tcd.toml, ...).")],
        name: Annotated[
            str | None, typer.Option(help="Run name (default: the config's stem).")
        ] = None,
        set_: Set = None,
        memory_budget_gb: Budget = 8.0,
    ) -> None:
        """Train a head on the train split's cached features; writes W/runs/NAME/."""
        store = WorkDir(work)
        run_config = load_settings(RunConfig, config, set_ or [])
        name = name or config.stem
        data = features(store, "train", memory_budget_gb)
        best = _train_one(store, name, run_config, data)
        where = store.path / "runs" / name
        typer.echo(f"best epoch {best['epoch']} (val t2v R@1 {best['val_r1']:.1f}); run in {where}")

    @app.command("ablate")
    def ablate_command(
        work: Work,
        grid: Annotated[Path, typer.Option(help="TOML list of [[variant]] name/config/set.")],
        split: Annotated[str, typer.Option(help="Split to score each variant on.")] = "test",
        out: Annotated[
            Path | None, typer.Option(help="Markdown table path (default W/runs/ablations.md).")
        ] = None,
        set_: Set = None,
        memory_budget_gb: Budget = 8.0,
    ) -> None:
        """Train every variant over the same caches and print one Markdown table."""
        store = WorkDir(work)
        variants = read_grid(grid)
        train_data = features(store, "train", memory_budget_gb)
        eval_data = features(store, split, memory_budget_gb)
        base = Path.cwd()

        def train_and_score(name: str, config: RunConfig) -> dict:
            _train_one(store, name, config, train_data)
            return evaluate(store.path / "runs" / name, eval_data)

        # grid-wide overrides (e.g. train.seed=1) apply to every variant
        for variant in variants:
            variant.set[:0] = set_ or []
        rows = run_grid(variants, base, RunConfig, train_and_score)
        table = markdown_table(rows)
        out = out or store.path / "runs" / "ablations.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"t2v on the {split} split of {store.path}\n\n{table}")
        typer.echo(table)
        typer.echo(f"table written to {out}")
