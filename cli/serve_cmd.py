"""`tcd serve`: the search page and its JSON API over one work dir (cli/serve_app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import Work, warn

ServeRun = Annotated[
    str,
    typer.Option(
        help="Run name under W/runs/, or the path (from the current directory) of a run "
        "folder of another work dir with the same encoders; `zero-shot` (the default) needs "
        "no training."
    ),
]
ServeSplit = Annotated[
    str | None,
    typer.Option(help="Split searched by default (default: `all` for a collection, else test)."),
]
Host = Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes it to the network.")]
Port = Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")]
AllowHost = Annotated[
    list[str] | None,
    typer.Option(
        help="Another name requests may give in their Host header (a reverse proxy's, the "
        "machine's name); repeatable. Besides --host and localhost, 127.0.0.1, ::1."
    ),
]


def build_service(work: Path, run: str = "zero-shot", split: str | None = None):
    """The served state for a work dir: run, splits, text encoder (used by tests and benches)."""
    from cache import WorkDir
    from cli.retrieval_wiring import default_split, frame_at, open_split, query_encoder
    from cli.serve_app import SearchService
    from cli.video_details import video_details
    from pipeline.settings import resolve_settings

    store = WorkDir(work)
    settings = resolve_settings(store.path)
    return SearchService(
        work=store.path,
        run=run,
        default_split=split or default_split(store.path),
        open_split=lambda name: open_split(store.path, run, name, settings=settings),
        encode=query_encoder(store.path),
        frame_at=frame_at,
        details=lambda video: video_details(store, video, settings),
        log=warn,
    )


def serve_command(
    work: Work,
    run: ServeRun = "zero-shot",
    split: ServeSplit = None,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    allow_host: AllowHost = None,
) -> None:
    """Serve the search page and its API: models and index load once, then each query is
    answered in milliseconds."""
    import uvicorn

    from cli.serve_app import create_app

    service = build_service(work, run, split)
    service.warm()
    typer.echo(
        f"serving {service.work} (run {run}, split {service.default_split}) at "
        f"http://{host}:{port}/  (Ctrl+C stops)"
    )
    app = create_app(service, host, tuple(allow_host or ()))
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
