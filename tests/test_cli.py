"""The tcd command line: the issue's end-to-end line, --help, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cache import WorkDir
from cache.errors import TcdError
from cli.main import app
from tests.conftest import REPO

runner = CliRunner()


def tcd(*args: str) -> subprocess.CompletedProcess:
    """Run the real entry point in a subprocess (so exit codes and stderr are the user's)."""
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_synth_textvr_status_end_to_end(tmp_path):
    synth, work = tmp_path / "synth", tmp_path / "demo"
    result = runner.invoke(
        app, ["data", "synth", "--out", str(synth), "--videos", "40", "--seed", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 40 videos" in result.output
    result = runner.invoke(app, ["data", "textvr", "--root", str(synth), "--work", str(work), "-q"])
    assert result.exit_code == 0, result.output
    assert "40 added" in result.output
    result = runner.invoke(app, ["cache", "status", "--work", str(work)])
    assert result.exit_code == 0 and "videos   : 40" in result.output
    status = json.loads(
        runner.invoke(app, ["cache", "status", "--work", str(work), "--json"]).output
    )
    assert status["videos"]["present"] == 40 and status["videos"]["unreadable"] == 0
    assert sum(status["videos"]["by_split"].values()) == 40
    # a rerun changes nothing and says so
    result = runner.invoke(app, ["data", "textvr", "--root", str(synth), "--work", str(work), "-q"])
    assert "0 added, 0 changed, 40 unchanged, 0 removed" in result.output
    result = runner.invoke(app, ["cache", "gc", "--work", str(work)])
    assert result.exit_code == 0 and "cleared 0 row(s)" in result.output


def test_folder_command(tmp_path, synth_set):
    table = tmp_path / "caps.csv"
    videos = synth_set / "Video"
    first = sorted(videos.rglob("*.mp4"))[0].relative_to(videos)
    table.write_text(f"video,caption,split\n{first},a caption,test\n{first},another,test\n")
    result = runner.invoke(
        app,
        [
            "data",
            "folder",
            "--videos",
            str(videos),
            "--captions",
            str(table),
            "--work",
            str(tmp_path / "w"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "videos: 1 added" in result.output and "captions: 2 added" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["cache", "status", "--work", "/nonexistent/w"], "is not a work directory"),
        (
            ["data", "textvr", "--root", "/nonexistent/r", "--work", "/tmp/x"],
            "TextVR root folder not found",
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_1(args, message):
    result = tcd(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "data" in result.output and "cache" in result.output
    for group, commands in {
        "data": ["synth", "textvr", "folder"],
        "cache": ["status", "gc"],
    }.items():
        output = runner.invoke(app, [group, "--help"]).output
        assert all(c in output for c in commands)
        for command in commands:
            assert runner.invoke(app, [group, command, "--help"]).exit_code == 0


def test_flags_show_no_value_in_help():
    """Typer shows every option's type, `<bool>` for a flag, which reads as if `--json` took
    a value (`--json true` is refused): the flags of every command show none (typer's own
    `--help` keeps it)."""
    from typer.main import get_command

    def commands(command, path: list[str]):  # typer's own command classes
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from commands(sub, [*path, name])
        else:
            yield path, command

    checked = 0
    for path, command in commands(get_command(app), []):
        output = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
        lines = [line for line in output.splitlines() if "<bool>" in line]
        assert all("--help" in line for line in lines), (path, lines)
        checked += sum(bool(getattr(p, "is_flag", False)) for p in command.params)
    assert checked >= 20  # the stages' --strict, --retry-failed, --quiet, every --json, ...


# -- retrieval commands: one `error:` line where users met tracebacks ------------------------
@pytest.fixture(scope="module")
def trained(synth_set, tmp_path_factory):
    """A small work dir with every stage run and run `r` trained (nothing evaluated)."""
    from tests.test_retrieval import trained_work

    root = tmp_path_factory.mktemp("cli-trained")
    return trained_work(shutil.copytree(synth_set, root / "synth"), root)


def tcd_error(*args: str) -> str:
    """Run `tcd ARGS` in-process; it must stop with a TcdError, which `main` prints as one
    line. Returns that line."""
    result = runner.invoke(app, list(args))
    assert isinstance(result.exception, TcdError), (result.exception, result.output)
    line = f"error: {result.exception}"
    assert "\n" not in line
    return line


@pytest.mark.parametrize(
    "command",
    [["search", "a bakery sign"], ["index"], ["eval"], ["report", "--out", "page.html"]],
)
def test_an_empty_split_is_one_error_line(trained, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = ["--work", str(trained), "--run", "r", "--split", "val"]
    line = tcd_error(command[0], *run, *command[1:])
    assert "split 'val' has no videos" in line and "choose another --split" in line
    assert not (tmp_path / "page.html").exists()


def test_an_empty_query_is_refused(trained):
    for query in ("", "   "):
        line = tcd_error("search", "--work", str(trained), "--run", "r", "--split", "train", query)
        assert "the query is empty" in line
    search = ["search", "--work", str(trained), "--run", "r", "--split", "train", "a sign"]
    for value in ("nan", "inf"):  # found nothing and said so, where the served page refused
        line = tcd_error(*search, "--min-score", value)
        assert "min_score must be a finite number" in line


def test_eval_options_that_would_be_ignored_are_refused(trained):
    evaluate = ["eval", "--work", str(trained), "--run", "r", "--split", "train"]
    for extra, message in [
        (["--order", "rand"], "--order and --rand-file order the columns of --sim-matrix"),
        (["--rand-file", "rand.json"], "--order and --rand-file order the columns"),
        (["--k", "5"], "--k is the candidates of --two-stage"),
    ]:
        assert message in tcd_error(*evaluate, *extra)


def test_a_model_option_is_a_name_even_where_it_reads_as_a_number(tmp_path):
    from cli.stages import StageRun

    WorkDir(tmp_path / "w", create=True)
    for name in ("2024", "2024-05-01", "true", "models/\U0001f642clip"):
        _, settings = StageRun().open(tmp_path / "w", {"encode.text_model": name})
        assert settings.encode.text_model == name


def test_results_with_nothing_evaluated_and_eval_of_an_empty_split_print_one_line(trained):
    for args, message in [
        (["results", "--work", str(trained)], "no run in"),
        (["eval", "--work", str(trained), "--run", "r", "--split", "val"], "has no videos"),
    ]:
        result = tcd(*args)  # the real entry point: exit 1 and one line, no usage box
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_retrieval_commands_list_their_choices():
    for command, choices in {
        "index": ["flat", "ivf", "hnsw"],
        "eval": ["annotation", "rand"],
        "export": ["h5"],
    }.items():
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and all(c in result.output for c in choices)
    result = runner.invoke(app, ["index", "--work", "w", "--run", "r", "--index", "ivf-typo"])
    assert result.exit_code == 2 and "ivf-typo" in result.output  # refused before any work


def test_make_targets_pass_their_variables_to_the_command():
    """`make ablate GRID=...` ran the default grid (the target named it itself)."""
    grid = "configs/study_temporal.toml"
    for target in ("ablate", "ablations"):
        result = subprocess.run(
            ["make", "-n", target, f"GRID={grid}", "WORK=work/elsewhere"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        ablate = [line for line in result.stdout.splitlines() if " ablate " in line]
        assert ablate and all(f"--grid {grid}" in line for line in ablate), result.stdout
