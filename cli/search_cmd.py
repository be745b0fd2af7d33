"""`tcd index` and `tcd search`: a run's FAISS index of a split, and free-text search."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from cli.common import Run, Split, Work
from retrieval.choices import IndexKind

Query = Annotated[
    str, typer.Argument(help="Free text, e.g. 'the bakery SUNRISE BREAD on a street'.")
]
TopK = Annotated[int, typer.Option(min=1, help="Results to show.")]
K = Annotated[int, typer.Option(min=1, help="Stage-1 candidates to rerank.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")]
SearchRun = Annotated[
    str,
    typer.Option(
        help="Run name under W/runs/; `zero-shot` (the default) is the frozen encoders, made "
        "on first use, so a work dir can be searched before any training."
    ),
]
Kind = Annotated[IndexKind, typer.Option("--index", help="flat (exact), ivf or hnsw.")]


def index_command(
    work: Work, run: Run, split: Split = "test", index: Kind = IndexKind.flat
) -> None:
    """Build a FAISS index over the run's query-independent video embeddings."""
    from cli.retrieval_wiring import open_split

    scored = open_split(work, run, split)
    started = time.monotonic()
    built = scored.build_index(index)
    seconds = time.monotonic() - started
    path = scored.run.index_path(split)
    typer.echo(f"{index} index of {built.ntotal} videos in {seconds:.2f} s -> {path}")


def search_command(
    work: Work,
    query: Query,
    run: SearchRun = "zero-shot",
    split: Split = "test",
    top_k: TopK = 10,
    k: K = 100,
    as_json: AsJson = False,
) -> None:
    """Rank the split's videos for a free-text query (FAISS, then the full head)."""
    from cli.retrieval_wiring import open_split, query_encoder, warn
    from retrieval.search import check_query, format_hits, search

    query = check_query(query)
    scored = open_split(work, run, split)
    hits = search(scored, query, query_encoder(work), top_k=top_k, k=k, log=warn)
    if as_json:
        results = [hit.to_json() for hit in hits]
        typer.echo(json.dumps({"query": query, "results": results}, indent=2, ensure_ascii=False))
    else:
        typer.echo(format_hits(query, hits))


def register(app: typer.Typer) -> None:
    app.command("index")(index_command)
    app.command("search")(search_command)
