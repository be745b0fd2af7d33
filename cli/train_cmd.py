"""`tcd train` and `tcd ablate`: train heads on cached features."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cache import WorkDir
from cache.settings import load_settings
from cli.common import features
from heads.ablate import (
    COST_COLUMNS,
    QUALITY_COLUMNS,
    Variant,
    markdown_table,
    parse_seeds,
    read_grid,
    run_study,
    summarise,
)
from heads.config import RunConfig
from heads.cost import flops, ms_per_1k_pairs, ocr_texts_per_video
from heads.data import Features
from heads.metrics import t2v_metrics, v2t_metrics
from heads.run_dir import RunDir
from heads.scoring import score_matrix
from heads.train import train
from pipeline.captions import run_captions
from pipeline.encode import run_encode
from pipeline.settings import resolve_settings

Work = Annotated[Path, typer.Option("--work", "-w", help="Work directory with encoded features.")]
Budget = Annotated[
    float, typer.Option(help="Above this many GB of features, memory-map them instead.")
]
Set = Annotated[
    list[str] | None, typer.Option("--set", help="Override, e.g. train.epochs=5 (repeatable).")
]


def evaluate(run: RunDir, data: Features) -> dict[str, float]:
    """A run's metrics on `data`, and what its head costs (heads/cost.py)."""
    head, config = run.load_head(data.frames.shape[-1], data.queries.shape[-1])
    sim = score_matrix(head, data)
    return {
        **t2v_metrics(sim, data.query_video),
        **{f"v2t_{k}": v for k, v in v2t_metrics(sim, data.query_video).items()},
        "params": sum(p.numel() for p in head.parameters()),
        "ocr_texts": ocr_texts_per_video(config.head, data),
        **flops(head, data),
        "ms_per_1k_pairs": ms_per_1k_pairs(head, data),
    }


def _train_one(work: WorkDir, name: str, config: RunConfig, train_data: Features) -> dict:
    def show(record: dict) -> None:
        typer.echo(
            f"  epoch {record['epoch']:>3}  loss {record['loss']:.3f}  "
            f"val R@1 {record['val_r1']:.1f}  ({record['seconds']:.1f} s)"
        )

    size = f"{train_data.n_videos} videos, {len(train_data.queries)} captions"
    typer.echo(f"train {name}: {config.head.kind}, {size}")
    if train_data.missing:
        typer.echo(
            f"warning: {len(train_data.missing)} video(s) without features left out", err=True
        )
    return train(config, train_data, RunDir(work.path, name), progress=show)


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
        run = RunDir(store.path, name)
        best = run.finished(run_config) if run.config_path.exists() else None
        if best is None:  # (a finished run needs no features: a rerun returns at once)
            best = _train_one(store, name, run_config, features(store, "train", memory_budget_gb))
        else:
            typer.echo(f"{name}: already trained with this config")
        typer.echo(
            f"best epoch {best['epoch']} (val t2v R@1 {best['val_r1']:.1f}); run in {run.path}"
        )

    @app.command("ablate")
    def ablate_command(
        work: Work,
        grid: Annotated[
            Path, typer.Option(help="TOML list of [[variant]] name/config/set/pipeline.")
        ],
        split: Annotated[str, typer.Option(help="Split to score each variant on.")] = "test",
        seeds: Annotated[
            str, typer.Option(help="Comma-separated head-training seeds, e.g. 0,1,2.")
        ] = "0",
        out: Annotated[
            Path | None,
            typer.Option(help="Markdown tables (default W/runs/ablations.md; .json beside it)."),
        ] = None,
        set_: Set = None,
        memory_budget_gb: Budget = 8.0,
    ) -> None:
        """Train every variant (once per seed) over the same caches; tables of mean ± sd."""
        store = WorkDir(work)
        variants = read_grid(grid)
        seed_list = parse_seeds(seeds)
        loaded: dict[tuple[str, ...], tuple[Features, Features]] = {}

        def variant_features(variant: Variant) -> tuple[Features, Features]:
            if variant.pipeline not in loaded:
                settings = resolve_settings(store.path, None, variant.pipeline)
                if variant.pipeline:  # captions and their encodings only; OCR, frames shared
                    typer.echo(f"captions for {' '.join(variant.pipeline)}")
                    reports = [run_captions(store, settings.captions, settings.ocr)]
                    reports += run_encode(
                        store, settings.encode, settings.captions, settings.ocr, workers=0
                    )
                    for report in reports:
                        typer.echo(f"  {report}")
                loaded[variant.pipeline] = (
                    features(store, "train", memory_budget_gb, settings),
                    features(store, split, memory_budget_gb, settings),
                )
            return loaded[variant.pipeline]

        def train_and_score(variant: Variant, seed: int, config: RunConfig) -> dict:
            train_data, eval_data = variant_features(variant)
            run = RunDir.for_ablation(store.path, variant.name, seed)
            best = train(config, train_data, run)
            result = evaluate(run, eval_data)
            result["train_s"] = sum(epoch["seconds"] for epoch in run.epochs())
            typer.echo(
                f"{variant.name} seed {seed}: best epoch {best['epoch']}, "
                f"{split} t2v R@1 {result['R@1']:.1f}"
            )
            return result

        rows = run_study(variants, seed_list, Path.cwd(), RunConfig, train_and_score, set_)
        summary = summarise(rows, variants)
        header = (
            f"Split `{split}` of `{store.path}`; grid `{grid}`; head-training seeds "
            f"{', '.join(map(str, seed_list))} (mean ± sample sd over seeds).\n\n"
        )
        tables = (
            f"{header}{markdown_table(summary, QUALITY_COLUMNS)}\n"
            f"{markdown_table(summary, COST_COLUMNS)}"
        )
        out = out or RunDir.study_tables(store.path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(tables)
        results = {"split": split, "seeds": seed_list, "grid": str(grid), "runs": rows}
        out.with_suffix(".json").write_text(json.dumps({**results, "summary": summary}, indent=1))
        typer.echo(tables)
        typer.echo(f"tables written to {out} (per-seed results in {out.with_suffix('.json')})")
