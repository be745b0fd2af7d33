"""`tcd index` and `tcd search`: a run's FAISS index of a split, and free-text search."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.common import Run, Work, flag, warn
from retrieval.choices import IndexKind

TopK = Annotated[int, typer.Option(min=1, help="Results to show.")]
K = Annotated[int, typer.Option(min=1, help="Stage-1 candidates to rerank.")]
AsJson = Annotated[bool, flag("--json", help="Print the hits as JSON.")]
SearchRun = Annotated[
    str,
    typer.Option(
        help="Run name under W/runs/, or the path (from the current directory) of a run "
        "folder of another work dir with the same encoders; `zero-shot` (the default) is the "
        "frozen encoders, made on first use, so a work dir can be searched before any training."
    ),
]
Kind = Annotated[IndexKind, typer.Option("--index", help="flat (exact), ivf or hnsw.")]


SearchSplit = Annotated[
    str | None,
    typer.Option(help="Split (default: `all` for a collection read without captions, else test)."),
]


def index_command(
    work: Work, run: Run, split: SearchSplit = None, index: Kind = IndexKind.flat
) -> None:
    """Build a FAISS index over the run's query-independent video embeddings (of the split
    `tcd search` searches when none is named)."""
    from cli.retrieval_wiring import default_split, open_split

    split = split or default_split(work)
    scored = open_split(work, run, split)
    started = time.monotonic()
    built = scored.build_index(index)
    seconds = time.monotonic() - started
    path = scored.run.index_path(split)
    typer.echo(f"{index} index of {built.ntotal} videos in {seconds:.2f} s -> {path}")


QueryArg = Annotated[
    str | None,
    typer.Argument(help="Free text, e.g. 'the bakery SUNRISE BREAD on a street'."),
]
QueriesFile = Annotated[
    Path | None,
    typer.Option(
        "--queries",
        help="Score many queries in one process: a text file (one query a line) or a JSON "
        "list of strings; prints one JSON line per query.",
    ),
]
MinScore = Annotated[float | None, typer.Option(help="Drop hits scoring below this.")]


def search_command(
    work: Work,
    query: QueryArg = None,
    run: SearchRun = "zero-shot",
    split: SearchSplit = None,
    top_k: TopK = 10,
    k: K = 100,
    min_score: MinScore = None,
    as_json: AsJson = False,
    queries: QueriesFile = None,
) -> None:
    """Rank the split's videos for a free-text query (FAISS, then the full head)."""
    from cli.retrieval_wiring import default_split, open_split, query_encoder
    from retrieval.index import RetrievalError
    from retrieval.search import Searcher, check_query, format_hits, read_queries

    if query is None and queries is None:
        raise RetrievalError("no query: give one, or a file of them with --queries")
    if query is not None and queries is not None:
        raise RetrievalError("give one query, or a file of them with --queries, not both")
    texts = read_queries(queries) if queries is not None else [check_query(query or "")]
    scored = open_split(work, run, split or default_split(work))
    searcher = Searcher.open(scored, warn)
    encode = query_encoder(work)
    for text in texts:
        hits = searcher.search(text, encode, top_k=top_k, k=k, min_score=min_score)
        results = [hit.to_json() for hit in hits]
        if queries is not None:  # JSON lines: one query per line
            typer.echo(json.dumps({"query": text, "results": results}, ensure_ascii=False))
        elif as_json:
            payload = {"query": text, "results": results}
            typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        else:
            typer.echo(format_hits(text, hits))


def register(app: typer.Typer) -> None:
    app.command("index")(index_command)
    app.command("search")(search_command)
