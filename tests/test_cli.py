"""The tcd command line: the issue's end-to-end line, --help, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

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
