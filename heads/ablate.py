"""Ablation studies: a TOML list of variants (a run config plus overrides), each trained with
several seeds over the same cached features and scored on one evaluation split.

A variant may also change caption settings (`pipeline = ["captions.xi=0.4"]`): the caller's
`features_for` callback then builds only the captions and their encodings for it (heads never
imports pipeline); OCR and frame features stay shared. Results are reported per seed and as
mean and spread over seeds, in three Markdown tables (quality, cost, training diagnostics)
and a JSON file. With query
groups (`groups`, heads/groups.py) the quality table also has each group's t2v R@1 and pair
accuracy.

    study = ablate(work, grid, "test", "0,1,2", features_for)  # .tables, .tables_path, ...
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cache.atomic import atomic_write
from cache.errors import SettingsError
from cache.settings import load_settings, parse_override, read_toml
from heads.checkpoint import CheckpointError
from heads.config import RunConfig
from heads.cost import head_cost
from heads.data import Features
from heads.groups import (
    QueryGroups,
    flat_group_header,
    flat_group_metrics,
    group_metrics,
    skipped_lines,
)
from heads.metrics import t2v_metrics, v2t_metrics
from heads.run_dir import RunDir
from heads.scoring import score_matrix
from heads.train import train

FeaturesFor = Callable[[tuple[str, ...]], tuple[Features, Features]]
"""A variant's `pipeline` overrides -> (train features, evaluation-split features)."""
GroupsFor = Callable[[Features], QueryGroups]
"""Evaluation-split features -> the groups of their queries (`GroupSpec.resolve`)."""


class StudyOutput(NamedTuple):
    tables: str  # the Markdown tables
    tables_path: Path
    results_path: Path  # every per-seed result and the summary, as JSON


PIPELINE_SECTIONS = ("captions.",)  # what a variant may change upstream of the heads


@dataclass(frozen=True)
class Variant:
    name: str
    config: str
    set: tuple[str, ...] = ()
    pipeline: tuple[str, ...] = ()  # caption-setting overrides, e.g. captions.xi=0.4
    paper_t2v_r1: float | None = None  # the paper's TextVR figure for this setting


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    digits: int = 1
    spread: bool = True  # show "± sd" (off for what does not vary with the seed)


def read_grid(path: Path) -> list[Variant]:
    data = read_toml(path, "ablation grid")
    variants = []
    for i, item in enumerate(data.get("variant", [])):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("config"), str)
        ):
            raise SettingsError(f"{path}: variant {i} needs a string 'name' and 'config'")
        name = item["name"]
        try:  # refused here, not once the variants before it have trained
            RunDir.check_name(name)
        except CheckpointError as exc:
            raise SettingsError(f"{path}: variant {i}: {exc}") from None
        extra = set(item) - {"name", "config", "set", "pipeline", "paper_t2v_r1"}
        if extra:
            raise SettingsError(f"{path}: variant {name!r} has unknown key(s) {sorted(extra)}")
        lists = {}
        for key in ("set", "pipeline"):
            value = item.get(key, [])
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise SettingsError(f"{path}: variant {name!r}: {key} must be a list of strings")
            lists[key] = tuple(value)
        bad = [x for x in lists["pipeline"] if not x.startswith(PIPELINE_SECTIONS)]
        if bad:
            raise SettingsError(
                f"{path}: variant {name!r}: pipeline overrides may change "
                f"{', '.join(s + '*' for s in PIPELINE_SECTIONS)} only, not {bad}"
            )
        paper = item.get("paper_t2v_r1")
        if paper is not None and not isinstance(paper, int | float):
            raise SettingsError(f"{path}: variant {name!r}: paper_t2v_r1 must be a number")
        variants.append(Variant(name, item["config"], **lists, paper_t2v_r1=paper))
    if not variants:
        raise SettingsError(f"{path}: no [[variant]] entries")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SettingsError(f"{path}: variant names must be unique")
    return variants


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SettingsError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SettingsError(f"seeds must be distinct integers, got {text!r}")
    return seeds


def run_study(
    variants: list[Variant],
    seeds: list[int],
    base: Path,
    config_cls: type,
    train_and_score: Callable[[Variant, int, Any], dict[str, Any]],
    overrides: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Train and score every variant once per seed (`train.seed=S`); one row per run.

    Config paths are relative to `base` unless absolute; `overrides` apply to every variant
    before its own `set`, but an untrained variant (`train.epochs = 0` by its own config and
    `set`: zero-shot, untrained) keeps its 0 epochs. `train.seed` is refused among them:
    `seeds` give it.
    """
    overrides = list(overrides or [])
    if any(parse_override(item)[0] == ["train", "seed"] for item in overrides):
        raise SettingsError(
            "--set train.seed: each variant is trained once per seed of --seeds; name the "
            "seeds there (e.g. --seeds 5)"
        )
    rows = []
    for variant in variants:
        config_path = Path(variant.config)
        if not config_path.is_absolute():
            config_path = base / config_path
        try:
            own = load_settings(config_cls, config_path, list(variant.set))
        except SettingsError:  # valid only with the overrides (or not at all: said below)
            own = None
        untrained = getattr(getattr(own, "train", None), "epochs", None) == 0
        common = [
            item
            for item in overrides
            if not (untrained and parse_override(item)[0] == ["train", "epochs"])
        ]
        for seed in seeds:
            sets = [*common, *variant.set, f"train.seed={seed}"]
            config = load_settings(config_cls, config_path, sets)
            started = time.monotonic()
            result = train_and_score(variant, seed, config)
            rows.append(
                {
                    "variant": variant.name,
                    "seed": seed,
                    **result,
                    "wall_s": time.monotonic() - started,
                }
            )
    return rows


def summarise(rows: list[dict[str, Any]], variants: list[Variant]) -> list[dict[str, Any]]:
    """Per variant: the mean of every numeric field over the seeds that have it, and its
    sample standard deviation under `<field>_sd` (0 for a single seed); a field only some
    seeds have (a diagnostic their held-out videos allow) also gives their count under
    `<field>_seeds`."""
    out = []
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant.name]
        if not runs:
            continue
        summary: dict[str, Any] = {
            "variant": variant.name,
            "pipeline": " ".join(variant.pipeline),
            "seeds": len(runs),
            "paper_t2v_r1": variant.paper_t2v_r1,
        }
        numeric = {
            k: None
            for r in runs
            for k, v in r.items()
            if isinstance(v, int | float) and k != "seed"
        }
        for key in numeric:
            values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]
            if len(values) < len(runs):
                summary[f"{key}_seeds"] = len(values)
            mean = sum(values) / len(values)
            spread = (
                math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                if len(values) > 1
                else 0.0
            )
            summary[key], summary[f"{key}_sd"] = mean, spread
        out.append(summary)
    return out


def markdown_table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """One Markdown table; a numeric cell with a `<key>_sd` companion reads 'mean ± sd', and
    one only some seeds have says how many."""
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column.key)
            if value is None or value == "":
                cells.append("–")
            elif isinstance(value, float):
                cell = f"{value:,.{column.digits}f}"
                spread = row.get(f"{column.key}_sd")
                seeds = row.get(f"{column.key}_seeds", row.get("seeds", 1))
                if column.spread and spread is not None and seeds > 1:
                    cell += f" ± {spread:,.{column.digits}f}"
                if f"{column.key}_seeds" in row:  # only some seeds have it
                    cell += f" ({seeds} of {row['seeds']} seeds)"
                cells.append(cell)
            elif isinstance(value, int) and not isinstance(value, bool):
                cells.append(f"{value:,}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


QUALITY_COLUMNS = [
    Column("variant", "variant"),
    Column("pipeline", "captions"),
    Column("R@1", "t2v R@1"),
    Column("R@5", "R@5"),
    Column("R@10", "R@10"),
    Column("MdR", "MdR"),
    Column("MnR", "MnR"),
    Column("v2t_R@1", "v2t R@1"),
    Column("v2t_R@5", "R@5"),
    Column("v2t_R@10", "R@10"),
    Column("v2t_MdR", "MdR"),
    Column("v2t_MnR", "MnR"),
    Column("paper_t2v_r1", "paper TextVR t2v R@1"),
]
COST_COLUMNS = [
    Column("variant", "variant"),
    Column("ocr_texts", "OCR texts / video", spread=False),
    Column("params", "head params", 0, spread=False),
    Column("video_mflops", "MFLOPs / video", spread=False),
    Column("pair_mflops", "MFLOPs / pair", 3, spread=False),
    Column("ms_per_1k_pairs", "ms / 1k pairs", 2),
    Column("train_s", "train s", 0),
]


DIAGNOSTICS = ("val_loss", "val_r1", "hsc", "hsc_uniform", "calib_acc", "calib_chance")
DIAGNOSTIC_COLUMNS = [
    Column("variant", "variant"),
    Column("pipeline", "captions"),
    Column("windows_with_sample", "windows with an OCR sample %", spread=False),
    Column("windows_with_text", "windows with text %", spread=False),
    Column("val_loss", "val loss", 3),
    Column("val_r1", "val R@1"),
    Column("hsc", "HSC loss", 4),
    Column("hsc_uniform", "HSC uniform guess", 4, spread=False),
    Column("calib_acc", "calibration acc", 3),
    Column("calib_chance", "calibration chance", 3, spread=False),
    Column("missing_videos", "scored videos without features (zeros)", 0, spread=False),
]


def evaluate(run: RunDir, data: Features, groups: QueryGroups | None = None) -> dict[str, float]:
    """A run's t2v and v2t metrics on `data`, each query group's R@1 and pair accuracy, and
    what its head costs (heads/cost.py)."""
    head, _ = run.load_head(data.frames.shape[-1], data.queries.shape[-1], data.shared_space)
    sim = score_matrix(head, data)
    by_group = group_metrics(sim, data.query_video, groups) if groups is not None else {}
    return {
        **t2v_metrics(sim, data.query_video),
        **{f"v2t_{k}": v for k, v in v2t_metrics(sim, data.query_video).items()},
        **flat_group_metrics(by_group),
        **head_cost(head, data),
    }


def quality_columns(summary: list[dict[str, Any]]) -> list[Column]:
    """`QUALITY_COLUMNS` with the query groups' columns before the paper's figure."""
    keys = dict.fromkeys(k for row in summary for k in row if flat_group_header(k))
    groups = [Column(k, flat_group_header(k)) for k in keys]
    return [*QUALITY_COLUMNS[:-1], *groups, QUALITY_COLUMNS[-1]]


def ablate(
    work: Path,
    grid: Path,
    split: str,
    seeds: str,
    features_for: FeaturesFor,
    overrides: Sequence[str] = (),
    out: Path | None = None,
    progress: Callable[[str], None] = print,
    groups: GroupsFor | None = None,
) -> StudyOutput:
    """Train every variant of `grid` once per seed (in `RunDir.for_ablation`; a finished run
    is reused) and score it on `split`; write the tables to `out` (default
    `RunDir.study_tables`) and every result to the `.json` beside it. `groups` adds per-group
    columns."""
    if out is not None and out.suffix.lower() == ".json":  # refused before any training
        raise SettingsError(
            f"--out {out}: the results go to the .json beside the tables, which would "
            f"overwrite them; name the tables file, e.g. {out.with_suffix('.md')}"
        )
    variants, seed_list = read_grid(grid), parse_seeds(seeds)
    scorer = _variant_scorer(work, split, features_for, progress, groups)
    rows = run_study(variants, seed_list, Path.cwd(), RunConfig, scorer, overrides)
    summary = summarise(rows, variants)
    header = (
        f"Split `{split}` of `{work}`; grid `{grid}`; head-training seeds "
        f"{', '.join(map(str, seed_list))} (mean ± sample sd over seeds).\n\n"
    )
    tables = (
        f"{header}{markdown_table(summary, quality_columns(summary))}\n"
        f"{markdown_table(summary, COST_COLUMNS)}\n"
        "Diagnostics of each run's best epoch (validation = a held-out share of the train "
        "split; HSC on train batches; calibration accuracy on held-out frames):\n\n"
        f"{markdown_table(summary, DIAGNOSTIC_COLUMNS)}"
    )
    out = out or RunDir.study_tables(work)
    atomic_write(out, tables)
    results = {"split": split, "seeds": seed_list, "grid": str(grid), "runs": rows}
    results_path = out.with_suffix(".json")
    atomic_write(results_path, json.dumps({**results, "summary": summary}, indent=1))
    return StudyOutput(tables, out, results_path)


def _variant_scorer(
    work: Path,
    split: str,
    features_for: FeaturesFor,
    progress: Callable[[str], None],
    groups_for: GroupsFor | None = None,
) -> Callable[[Variant, int, RunConfig], dict[str, Any]]:
    """Train one variant with one seed and score it; features (and their query groups) are
    loaded once per distinct `pipeline` override list."""
    loaded: dict[tuple[str, ...], tuple[Features, Features]] = {}
    grouped: dict[tuple[str, ...], QueryGroups | None] = {}

    def train_and_score(variant: Variant, seed: int, config: RunConfig) -> dict[str, Any]:
        if variant.pipeline not in loaded:
            loaded[variant.pipeline] = features_for(variant.pipeline)
            train_missing, eval_missing = (len(d.missing) for d in loaded[variant.pipeline])
            if train_missing or eval_missing:
                progress(
                    f"warning: {variant.name}'s features: {train_missing} train video(s) "
                    f"without features left out, {eval_missing} {split} video(s) scored as "
                    "zeros"
                )
        train_data, eval_data = loaded[variant.pipeline]
        if variant.pipeline not in grouped:
            groups = groups_for(eval_data) if groups_for is not None else None
            first = next(iter(grouped.values()), None)
            if groups is not None and first is None:  # every variant has the same queries
                skipped = (groups.not_in_split, groups.twins_not_in_split)
                for line in skipped_lines(*skipped, groups.pairs_without_features):
                    progress(f"groups {groups.source}: {line}")
            elif groups is not None and groups.pairs_without_features != (
                first.pairs_without_features  # ... but maybe features lacking other videos
            ):
                progress(
                    f"groups {groups.source}: {variant.name}'s features leave "
                    f"{groups.pairs_without_features} pair(s) out of the pair accuracy "
                    "(a video without features)"
                )
            grouped[variant.pipeline] = groups
        run = RunDir.for_ablation(work, variant.name, seed)
        best = train(config, train_data, run)
        result = evaluate(run, eval_data, grouped[variant.pipeline])
        result["train_s"] = sum(epoch["seconds"] for epoch in run.epochs())
        result["windows_with_text"] = 100 * float(eval_data.caption_mask.mean())
        result["missing_videos"] = len(eval_data.missing)
        if math.isfinite(eval_data.window_sample_share):
            result["windows_with_sample"] = 100 * eval_data.window_sample_share
        for key in DIAGNOSTICS:  # the best epoch's validation and HSC diagnostics
            if isinstance(best.get(key), int | float) and math.isfinite(best[key]):
                result[key] = float(best[key])
        progress(
            f"{variant.name} seed {seed}: best epoch {best['epoch']}, "
            f"{split} t2v R@1 {result['R@1']:.1f}"
        )
        return result

    return train_and_score
