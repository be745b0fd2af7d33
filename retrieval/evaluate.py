"""`tcd eval` and `tcd results`: a run's metrics on one split, saved per split in the run's
`metrics.json` (via `RunDir`), and one table over every evaluated run.

Exact scoring runs the full head on every (caption, video) pair; `--two-stage` takes K FAISS
candidates per caption from the run's current index (retrieval/run_split.py) and reranks them,
unscored pairs getting a finite floor below every real score (retrieval/index.py). A matrix
holding NaN or inf is refused with one line naming how many rows and columns hold them. A run
whose training did not finish is scored, flagged (`training_finished: false`) and warned about.
With query groups (`--groups`, heads/groups.py) the report also holds each group's t2v metrics
and pair accuracy under `groups`, printed after the t2v/v2t table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heads.checkpoint import CheckpointError
from heads.groups import TWIN_SWAP, QueryGroups, group_report, skipped_lines
from heads.metrics import METRICS, check_finite, t2v_metrics, v2t_metrics
from heads.run_dir import RunDir
from heads.scoring import score_matrix
from retrieval.export import sim_matrix_columns, write_sim_matrix
from retrieval.index import RetrievalError, two_stage
from retrieval.run_split import RunSplit

LOG = logging.getLogger(__name__)


@dataclass
class SimMatrixExport:
    """Where `--sim-matrix` goes and in which column order."""

    path: Path
    order: str = "annotation"
    rand_file: Path | None = None


def evaluate(
    split: RunSplit,
    two_stage_k: int | None = None,
    export: SimMatrixExport | None = None,
    log: Callable[[str], None] = LOG.warning,
    groups: QueryGroups | None = None,
) -> dict[str, Any]:
    """Score the split, save (unless the run is another work dir's) and return its report
    (metrics, sizes, timing, flags, and the metrics of each query group of `groups`)."""
    data, run = split.features, split.run
    if export is not None:  # a bad --rand-file fails before the scoring, not after
        sim_matrix_columns(data.video_ids, export.order, export.rand_file)
    finished = run.finished() is not None
    started = time.monotonic()
    report: dict[str, Any] = {
        "run": run.name,
        "split": split.split,
        "videos": data.n_videos,
        "captions": len(data.queries),
        "training_finished": finished,
    }
    if two_stage_k is None:
        sim = score_matrix(split.head, data)
    else:
        result = two_stage(split.head, data, split.current_index(log), two_stage_k)
        sim = result.scores
        report["two_stage"] = {
            "k": min(two_stage_k, data.n_videos),
            "recall_in_k": result.recall_in_k,
            "stage1_s": result.stage1_s,
            "stage2_s": result.stage2_s,
        }
    report["seconds"] = time.monotonic() - started
    check_finite(sim, f"the scores of run {run.name} on {split.split}")
    report["t2v"] = t2v_metrics(sim, data.query_video)
    report["v2t"] = v2t_metrics(sim, data.query_video)
    if groups is not None:
        report["groups"] = group_report(sim, data.query_video, groups)
    report["missing_videos"] = data.missing
    report["features"] = dict(data.source)  # the feature groups scored (`tcd results`)
    if split.read_only:
        log(
            f"run {run.path} belongs to another work dir, whose folder is never written: "
            "these metrics are not saved (tcd results will not show them)"
        )
    else:
        run.save_metrics(split.split, report)
    if export is not None:
        write_sim_matrix(export.path, sim, data.video_ids, export.order, export.rand_file)
    return report


def metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """Rows of R@1 R@5 R@10 MdR MnR, one per named direction (t2v, v2t)."""
    lines = [f"{'':<5}" + "".join(f"{c:>8}" for c in METRICS)]
    for name, values in rows.items():
        lines.append(f"{name:<5}" + "".join(f"{values[c]:>8.1f}" for c in METRICS))
    return "\n".join(lines)


GROUP_COLUMNS = ("R@1", "R@5", "MnR")  # printed per group (metrics.json holds all of METRICS)


def group_table(groups: dict[str, Any]) -> str:
    """One row per query group (name, queries, R@1, R@5, MnR), each group's pair accuracy,
    and what the groups file named outside the split."""
    by_group = groups["by_group"]
    lines = [f"t2v by group ({groups['source']}):"]
    if by_group:
        width = max(len(name) for name in [*by_group, "group"]) + 2
        lines.append(
            f"{'group':<{width}}{'queries':>8}" + "".join(f"{c:>8}" for c in GROUP_COLUMNS)
        )
        for name, values in by_group.items():
            cells = "".join(f"{values[c]:>8.1f}" for c in GROUP_COLUMNS)
            lines.append(f"{name:<{width}}{values['queries']:>8}{cells}")
    else:
        lines.append("no query of this split is in a group")
    for name, values in by_group.items():
        if "pair_accuracy" in values:
            lines.append(
                f"{name} pair accuracy: {values['pair_accuracy']:.1f}% of {values['pairs']} "
                "pairs (true video above its twin, ties half)"
            )
        elif name == TWIN_SWAP:
            lines.append(f"{name} pair accuracy: no pair left to score (see below)")
    lines += skipped_lines(
        groups["entries_not_in_split"],
        groups["twins_not_in_split"],
        groups.get("pairs_without_features", 0),  # (absent from reports saved before it)
    )
    return "\n".join(lines)


def format_evaluation(report: dict[str, Any], export: SimMatrixExport | None = None) -> str:
    """The report as `tcd eval` prints it."""
    lines = [
        f"{report['run']} on {report['split']}: {report['videos']} videos, "
        f"{report['captions']} captions",
        metrics_table({"t2v": report["t2v"], "v2t": report["v2t"]}),
    ]
    if "two_stage" in report:
        ts = report["two_stage"]
        lines.append(
            f"two-stage K={ts['k']}: true video in K for {ts['recall_in_k']:.1f}% of queries; "
            f"stage 1 {ts['stage1_s']:.3f} s, stage 2 {ts['stage2_s']:.2f} s"
        )
    if "groups" in report:
        lines.append(group_table(report["groups"]))
    if export is not None:
        lines.append(f"sim matrix ({export.order} column order) -> {export.path}")
    return "\n".join(lines)


def _check_report(report: dict[str, Any], path: Path) -> None:
    """Refuse a saved report without the fields `results_table` shows."""
    try:
        [float(report[d][c]) for d in ("t2v", "v2t") for c in METRICS]
        int(report["captions"]), int(report["videos"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a `tcd eval` record (a field missing or not a number: {exc})"
        ) from None


def evaluation_warnings(report: dict[str, Any]) -> list[str]:
    """What the user should know about a report's numbers."""
    warnings = []
    if not report["training_finished"]:
        warnings.append(
            f"run {report['run']} has not finished training (killed or still running): these "
            "are the metrics of its best checkpoint so far; rerun `tcd train` to finish it"
        )
    if report["missing_videos"]:
        missing = len(report["missing_videos"])
        warnings.append(f"{missing} video(s) without features scored as zeros")
    return warnings


def results_table(
    work: str | Path,
    split: str,
    log: Callable[[str], None] = LOG.warning,
    features: dict[str, str] | None = None,
) -> str:
    """One row of saved t2v and v2t metrics per run evaluated on `split` (its last `tcd
    eval`, marked where that scored two-stage, an unfinished run, videos without features,
    or other feature groups than `features`, the work dir's now). A run whose record cannot
    be read is left out, with one line to `log`."""
    rows = {}
    for run in RunDir.evaluated(work):
        try:
            saved = run.saved_metrics()
            if split in saved:
                _check_report(saved[split], run.metrics_path)
                rows[run.name] = saved[split]
        except CheckpointError as exc:
            log(f"{exc}; left out of the table")
    if not rows:
        raise RetrievalError(
            f"no run in {work} has metrics for split {split!r}; evaluate one with "
            f"`tcd eval --work {work} --run RUN --split {split}`"
        )
    headers = [f"t2v {METRICS[0]}", *METRICS[1:], f"v2t {METRICS[0]}", *METRICS[1:]]
    width = max(len(name) for name in [*rows, f"run ({split})"]) + 2
    lines = [f"{'run (' + split + ')':<{width}}" + "".join(f"{h:>9}" for h in headers)]
    for name, report in rows.items():
        values = [report[d][c] for d in ("t2v", "v2t") for c in METRICS]
        size = f"  ({report['captions']} captions x {report['videos']} videos)"
        unfinished = "  unfinished" if report.get("training_finished") is False else ""
        approximate = f"  two-stage K={report['two_stage']['k']}" if "two_stage" in report else ""
        missing = len(report.get("missing_videos") or ())
        zeros = f"  {missing} video(s) without features (zeros)" if missing else ""
        scored_on = report.get("features")
        other = features is not None and scored_on is not None and scored_on != features
        stale = "  on features of other settings (tcd eval again)" if other else ""
        cells = "".join(f"{v:>9.1f}" for v in values)
        lines.append(f"{name:<{width}}{cells}{size}{unfinished}{approximate}{zeros}{stale}")
    return "\n".join(lines)
