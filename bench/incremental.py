"""Incremental rebuilds through the CLI, as a share of a full build of the same synthetic set.

A build is what `make manifest features` runs, each step one process: `tcd data textvr`
(the manifest, incremental) then `tcd extract --set ocr.reuse=off` (ocr with `--engine`,
rapidocr by default, then captions and encode), timed together, start-up included. Builds:
the full one of `--videos` videos; a no-op rerun; a window change `captions.xi=0.5`
(captions and caption encoding only: the ocr and frames groups must show zero rows
computed); 10% new videos (a second work dir first built on 90% of the annotations, then
given the full files: only the new videos are processed). Rows computed per stage group are
read from the summary lines `tcd extract` prints.

    python -m bench.incremental [--videos 110] [--engine rapidocr]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli_latency import run_tcd, stage_rows
from bench.common import save
from pipeline.synth import generate


def build(data: Path, work: Path, engine: str, *sets: str) -> dict[str, Any]:
    """Manifest update and `tcd extract` as two processes: seconds, each step's seconds, rows
    computed (and failed) per stage group, and the summary lines."""
    manifest_s, _ = run_tcd("data", "textvr", "--root", str(data), "--work", str(work), "-q")
    options = ["--engine", engine, "-q"]
    options += [arg for value in ("ocr.reuse=off", *sets) for arg in ("--set", value)]
    extract_s, output = run_tcd("extract", "--work", str(work), *options)
    rows = stage_rows(output)
    return {
        "seconds": manifest_s + extract_s,
        "manifest_s": manifest_s,
        "extract_s": extract_s,
        "computed": {stage: r["computed"] for stage, r in rows.items()},
        "failed": sum(r["failed"] for r in rows.values()),
        "summary": [line for line in output.splitlines() if line.strip()],
    }


def compared(run: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    """`run` with its share of the full build's wall time."""
    return {**run, "ratio": run["seconds"] / full["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=110)
    parser.add_argument("--engine", default="rapidocr", help="OCR engine of every build")
    args = parser.parse_args()
    results: dict[str, Any] = {"videos": args.videos, "engine": args.engine, "ocr_reuse": "off"}
    with tempfile.TemporaryDirectory() as tmp:
        data, work = Path(tmp) / "synth", Path(tmp) / "work"
        generate(data, args.videos, seed=0, with_ocr_json=True, workers=2, progress=False)
        started = time.perf_counter()
        full = results["full"] = build(data, work, args.engine)
        print(f"full: {full['seconds']:.1f} s", flush=True)
        results["noop"] = compared(build(data, work, args.engine), full)
        results["xi_change"] = compared(build(data, work, args.engine, "captions.xi=0.5"), full)

        # 10% new videos: a second work dir built on 90% of each annotation file first
        originals = {p: p.read_text() for p in data.glob("TextVR_*.json")}
        paths = sorted({e["path"] for text in originals.values() for e in json.loads(text)})
        later = set(paths[len(paths) - max(1, len(paths) // 10) :])  # the videos added later
        for path, text in originals.items():
            path.write_text(json.dumps([e for e in json.loads(text) if e["path"] not in later]))
        second = Path(tmp) / "work90"
        results["first_90pct"] = build(data, second, args.engine)
        for path, text in originals.items():
            path.write_text(text)
        new = compared(build(data, second, args.engine), full)
        results["new_10pct"] = {"new_videos": len(later), **new}
        results["bench_s"] = time.perf_counter() - started
    for key, value in results.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "summary"}
        print(f"{key}: {value}")
    save("incremental", results)


if __name__ == "__main__":
    main()
