"""Process wall time of `tcd` commands: start-up, and stage commands with nothing to do.

Each command runs as its own process, as users run it: the installed `tcd` console script
(`python -c "from cli.main import main; main()"` where there is none). Each runs once to warm
the page cache, then `--runs` times: median, min and max wall seconds. The work dir is
`--work`, or `work/demo` when its caches are complete for its current settings, or else a
small synthetic set built in a temp dir with `tcd extract --engine kwai` (the set's
ground-truth OCR JSON: no OCR model is needed for a no-op). Every stage command must print
"nothing to do" for each of its groups, or the benchmark stops.

    python -m bench.cli_latency [--work W] [--runs 7] [--videos 12]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import save

DEMO = Path(__file__).resolve().parent.parent / "work" / "demo"
STAGE_GROUPS = {"ocr", "captions", "frames", "ocr_text", "queries"}
# `ocr [659d88cf19dbba21]: 10 computed, 2 failed, ...` or `...: nothing to do, 300 row(s) ...`
SUMMARY = re.compile(r"^(\S+) \[[0-9a-f]+\]: (?:(nothing to do)|(\d+) computed, (\d+) failed)")


def tcd_command() -> list[str]:
    """The installed `tcd` console script beside this interpreter, else `python -c`."""
    script = Path(sys.executable).parent / "tcd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from cli.main import main; main()"]


def run_tcd(*args: str) -> tuple[float, str]:
    """Run `tcd args` as a process; its wall seconds and stdout (exit status must be 0)."""
    started = time.perf_counter()
    done = subprocess.run([*tcd_command(), *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"tcd {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return seconds, done.stdout


def stage_rows(output: str) -> dict[str, dict[str, int]]:
    """Rows computed and failed per stage group, from the summary lines a stage prints."""
    rows = {}
    for line in output.splitlines():
        if match := SUMMARY.match(line):
            stage, idle, computed, failed = match.groups()
            rows[stage] = {"computed": 0 if idle else int(computed), "failed": int(failed or 0)}
    return rows


def is_noop(output: str, groups: set[str]) -> bool:
    """Whether a stage command's output says "nothing to do" for each of `groups`."""
    rows = stage_rows(output)
    return set(rows) == groups and not any(r["computed"] or r["failed"] for r in rows.values())


def status(work: Path) -> dict[str, Any]:
    """`tcd cache status --json` of `work`."""
    return json.loads(run_tcd("cache", "status", "--work", str(work), "--json")[1])


def complete(work: Path) -> bool:
    """Whether every stage group of `work`'s current settings has no row left to compute."""
    if not (work / "settings.toml").exists():
        return False
    current = [g for g in status(work)["stages"] if g["current"]]
    idle = all(g["pending"] == 0 and g["stale"] == 0 for g in current)
    return idle and {g["stage"] for g in current} == STAGE_GROUPS


def synthetic(root: Path, videos: int) -> Path:
    """A work dir of `videos` synthetic videos whose stages are done (OCR read from JSON)."""
    from pipeline.synth import generate

    data, work = root / "synth", root / "work"
    generate(data, videos, seed=0, with_ocr_json=True, workers=2, progress=False)
    run_tcd("data", "textvr", "--root", str(data), "--work", str(work), "-q")
    run_tcd("extract", "--work", str(work), "--engine", "kwai", "-q")
    return work


def measure(args: list[str], runs: int, groups: set[str] | None) -> dict[str, Any]:
    """Median, min and max wall seconds of `runs` runs after one warm-up run; a stage
    command's warm-up output must show nothing to do for its `groups`."""
    _, output = run_tcd(*args)
    if groups is not None and not is_noop(output, groups):
        raise SystemExit(f"tcd {' '.join(args)} is not a no-op here:\n{output}")
    seconds = [run_tcd(*args)[0] for _ in range(runs)]
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "runs_s": seconds,
    }


def measure_all(work: Path, runs: int) -> dict[str, dict[str, Any]]:
    """Each command's figures, keyed by the command as a user types it (W for the work dir)."""
    w = ["--work", str(work)]
    commands: list[tuple[str, list[str], set[str] | None]] = [
        ("tcd --help", ["--help"], None),
        ("tcd cache status --work W", ["cache", "status", *w], None),
        ("tcd ocr --work W -q", ["ocr", *w, "-q"], {"ocr"}),
        ("tcd caption --work W -q", ["caption", *w, "-q"], {"captions"}),
        ("tcd encode --work W -q", ["encode", *w, "-q"], {"frames", "ocr_text", "queries"}),
        ("tcd extract --work W -q", ["extract", *w, "-q"], STAGE_GROUPS),
    ]
    figures = {}
    for name, args, groups in commands:
        figures[name] = measure(args, runs, groups)
        print(f"{name}: median {figures[name]['median_s']:.2f} s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="a work dir whose caches are complete")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--videos", type=int, default=12, help="of the synthetic fallback")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.work is not None:
            if not complete(args.work):
                raise SystemExit(f"{args.work}: some stage has rows to compute; run the stages")
            work, source = args.work, "--work"
        elif complete(DEMO):
            work, source = DEMO, "work/demo"
        else:
            work, source = synthetic(Path(tmp), args.videos), "synthetic (kwai OCR JSON)"
        results: dict[str, Any] = {
            "work": source,
            "videos": status(work)["videos"]["present"],
            "runs": args.runs,
            "launcher": " ".join(tcd_command()),
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
            "commands": measure_all(work, args.runs),
        }
    save("cli_latency", results)


if __name__ == "__main__":
    main()
