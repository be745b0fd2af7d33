"""`tcd eval` and `tcd results`: a run's metrics on a split, and a table of every run's.

Like every command module, it imports torch and the heads only when a command runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cache import WorkDir
from cli.common import Run, Split, Work, feature_source, flag, warn
from retrieval.choices import ColumnOrder

SimMatrix = Annotated[
    Path | None, typer.Option(help="Write the float32 captions x videos matrix (.npy).")
]
Order = Annotated[ColumnOrder, typer.Option(help="Column order of --sim-matrix.")]
RandFile = Annotated[Path | None, typer.Option(help="TextVR_test_rand.json, for --order rand.")]
TwoStage = Annotated[bool, flag("--two-stage", help="FAISS top-K, then full rerank.")]
K = Annotated[
    int | None, typer.Option(min=1, help="Candidates per query for --two-stage (default 100).")
]
TWO_STAGE_K = 100
AsJson = Annotated[bool, flag("--json", help="Print the metrics as JSON.")]
Groups = Annotated[
    str | None,
    typer.Option(
        "--groups",
        help="t2v metrics per query group: a JSON or CSV file (caption id or row -> group, "
        "twin video for twin-swap), or `domain` (the manifest's domain of each video).",
    ),
]


def eval_command(
    work: Work,
    run: Run,
    split: Split = "test",
    sim_matrix: SimMatrix = None,
    order: Order = ColumnOrder.annotation,
    rand_file: RandFile = None,
    two_stage: TwoStage = False,
    k: K = None,
    as_json: AsJson = False,
    groups: Groups = None,
) -> None:
    """Score every (caption, video) pair of a split; print t2v and v2t metrics (and per
    query group with --groups)."""
    from cli.retrieval_wiring import open_split
    from heads.groups import parse_groups
    from retrieval.evaluate import SimMatrixExport, evaluate, evaluation_warnings, format_evaluation
    from retrieval.index import RetrievalError

    if not sim_matrix and (order != ColumnOrder.annotation or rand_file is not None):
        raise RetrievalError("--order and --rand-file order the columns of --sim-matrix; add it")
    if k is not None and not two_stage:
        raise RetrievalError("--k is the candidates of --two-stage; add it, or leave --k out")
    export = SimMatrixExport(sim_matrix, order, rand_file) if sim_matrix else None
    spec = parse_groups(groups) if groups else None  # a malformed file fails before scoring
    scored = open_split(work, run, split, need_queries=True)
    query_groups = None
    if spec is not None:
        manifest = WorkDir(work).manifest if spec.by_domain else None
        query_groups = spec.resolve(scored.features, manifest)
    two_stage_k = (k or TWO_STAGE_K) if two_stage else None
    report = evaluate(scored, two_stage_k, export, log=warn, groups=query_groups)
    typer.echo(json.dumps(report, indent=2) if as_json else format_evaluation(report, export))
    for line in evaluation_warnings(report):
        warn(line)


def results_command(work: Work, split: Split = "test") -> None:
    """One table of the saved metrics of every evaluated run (from `tcd eval`)."""
    from retrieval.evaluate import results_table

    current = feature_source(WorkDir(work))
    typer.echo(results_table(work, split, log=warn, features=current))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("results")(results_command)
