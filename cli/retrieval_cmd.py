"""The retrieval commands, registered from their modules: `tcd eval` and `tcd results`
(cli/eval_cmd.py), `tcd index` and `tcd search` (cli/search_cmd.py), `tcd report` and
`tcd export` (cli/report_cmd.py). What they need from `pipeline` is wired in
cli/retrieval_wiring.py; the work itself lives in `retrieval/`."""

from __future__ import annotations

import typer

from cli import eval_cmd, report_cmd, search_cmd


def register(app: typer.Typer) -> None:
    for module in (eval_cmd, search_cmd, report_cmd):
        module.register(app)
