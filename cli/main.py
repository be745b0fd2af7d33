"""Entry point of `tcd`. Library errors (`TcdError`) and environment errors (`OSError`: disk
full, permissions) become one line on stderr and exit 1."""

from __future__ import annotations

import sys

import typer

from cache.errors import TcdError
from cli import cache_cmd, data, retrieval_cmd, serve_cmd, show_cmd, stages, train_cmd

app = typer.Typer(
    name="tcd",
    help="Scene-text aware text-video retrieval (TCD): offline features, head training, search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data.register(app)
stages.register(app)
train_cmd.register(app)
retrieval_cmd.register(app)
cache_cmd.register(app)
show_cmd.register(app)
serve_cmd.register(app)


def main() -> None:
    try:
        app()
    except TcdError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except OSError as exc:  # disk full, permissions, I/O: the environment, not a bug
        where = f"{exc.filename}: " if exc.filename else ""
        typer.secho(f"error: {where}{exc.strerror or exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
