"""What the OCR gate (`ocr.reuse`) buys and what it loses, per synthetic profile.

For each profile: a work dir of the set's test split only (`W/<profile>`), and for each gate
variant (off, frame, boxes, boxes with 16 crops per recogniser call, frame+boxes; the two
box gates with each patch aligned within one pixel, `reuse_shift` 1; and the default gate,
which adds `reuse_edge`) the ocr stage, then captions and encode. Reported per variant:

- OCR frames/s: sampled frames / the stage's wall time less engine loading (one process,
  onnxruntime on 1 thread), and the share of frames (boxes) the gate read;
- key-text recall: the share of test videos whose key text (synth_meta.json) appears in one
  of their window captions;
- t2v R@1 of one trained tcd checkpoint (`--simple-run`/`--temporal-run`, a run dir trained
  on the ungated caches, e.g. by `make demo` / `make study`) scored on each variant's caches.

A long video (10 minutes, from bench.memory's set) adds OCR frames/s per variant.

    python -m bench.ocr_reuse [--profiles simple,temporal] [--out work/bench-ocr-reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import save
from cache import WorkDir
from pipeline.captions import run_captions
from pipeline.datasets import read_textvr
from pipeline.encode import run_encode
from pipeline.manifest import build_manifest
from pipeline.ocr import make_reader, ocr_sample_times, run_ocr, spot_video
from pipeline.settings import PipelineSettings, StageGroups, resolve_settings
from pipeline.stage import StageClock
from pipeline.video import probe

FIRST_RULE = {"reuse_shift": 0, "reuse_edge": False}  # the box test before the two settings
VARIANTS = {  # every gate setting that differs from the first rule is named
    "off": {"reuse": "off"},
    "frame": {"reuse": "frame"},
    "boxes": {"reuse": "boxes", **FIRST_RULE},
    "boxes-rec16": {"reuse": "boxes", "rec_batch": 16, **FIRST_RULE},
    "frame+boxes": {"reuse": "frame+boxes", **FIRST_RULE},
    "boxes-shift1": {"reuse": "boxes", "reuse_shift": 1, "reuse_edge": False},
    "frame+boxes-shift1": {"reuse": "frame+boxes", "reuse_shift": 1, "reuse_edge": False},
    "frame+boxes-shift1-edge": {"reuse": "frame+boxes", "reuse_shift": 1, "reuse_edge": True},
}
DEFAULT = "frame+boxes-shift1-edge"  # OcrSettings' defaults (tests/test_ocr_reuse.py)
PROFILES = {  # profile -> (synthetic set, work dir whose settings and tcd run are used)
    "simple": ("work/synth", "work/demo"),
    "temporal": ("work/synth-temporal", "work/study"),
}
RUN = "ablate/tcd/seed0"  # what `make ablations` / `make study` train first


def key_text_recall(work: WorkDir, settings: PipelineSettings, synth: Path) -> float:
    """The share of the work dir's videos with their key text (the text the query names) in
    a window caption, compared case-folded."""
    meta = json.loads((synth / "synth_meta.json").read_text())["videos"]
    keys = {v["path"]: v.get("key_text") or v["query_text"] for v in meta}
    group = StageGroups.resolve(work, settings).captions
    paths = work.manifest.videos.column("path")
    found = 0
    for row, path in enumerate(paths):
        key = next(k for p, k in keys.items() if str(path).endswith(p)).casefold()
        found += any(key in str(c).casefold() for c in group.group["captions"][row])
    return found / len(paths)


def ocr_frames(work: WorkDir, settings: PipelineSettings) -> int:
    durations = work.manifest.videos.column("duration")
    return sum(
        len(ocr_sample_times(float(d), settings.ocr, settings.captions.frames)) for d in durations
    )


def run_profile(profile: str, synth: Path, source: Path, run: str, out: Path) -> dict[str, Any]:
    from cli.retrieval_wiring import open_split
    from retrieval.evaluate import evaluate

    base, run_dir = resolve_settings(source), source / "runs" / run
    if not (run_dir / "config.toml").exists():
        raise SystemExit(f"{run_dir}: no trained run there (make demo / make study make one)")
    work = WorkDir(out / profile, create=True)
    build_manifest(work, read_textvr(synth, ("test",)), progress=False)
    copy = work.path / "runs" / "tcd"  # the run as trained now (a retrained head replaces it)
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run_dir, copy)
    frames = ocr_frames(work, base)
    results: dict[str, Any] = {"videos": len(work.manifest.videos), "ocr_frames": frames}
    for name, change in VARIANTS.items():
        settings = replace(base, ocr=replace(base.ocr, **change))
        run_ocr(work, settings.ocr, captions=settings.captions)  # a rerun computes nothing
        (report,) = StageGroups.resolve(work, settings).ocr.reports().values()  # the last run
        seconds = report["seconds"] - report["setup_s"]
        timing = {"ocr_seconds": seconds, "ocr_frames_per_s": frames / seconds}
        timing.update(report.get("figures", {}))
        run_captions(work, settings.captions, settings.ocr)
        run_encode(work, settings.encode, settings.captions, settings.ocr, workers=2)
        split = open_split(work.path, "tcd", "test", need_queries=True, settings=settings)
        metrics = evaluate(split)
        results[name] = {
            **timing,
            "key_text_recall": key_text_recall(work, settings, synth),
            "t2v_r1": metrics["t2v"]["R@1"],
        }
        print(f"{profile} {name}: {results[name]}", flush=True)
    off = results["off"]["ocr_frames_per_s"]
    for name in VARIANTS:
        results[name]["speedup"] = results[name]["ocr_frames_per_s"] / off
    return results


def long_video(base: PipelineSettings, root: Path) -> dict[str, Any]:
    """OCR frames/s of each variant on the 10-minute videos of bench.memory's set."""
    from bench.memory import make_set

    work = WorkDir(root / "work") if (root / "work").exists() else WorkDir(make_set(root, 600))
    paths = work.manifest.videos.column("path")
    results = {}
    for name, change in VARIANTS.items():
        ocr = replace(base.ocr, **change)
        reader, frames, started = make_reader(ocr), 0, None
        for path in paths:
            times = ocr_sample_times(probe(path).duration, ocr, base.captions.frames)
            started = started or time.perf_counter()
            if hasattr(reader, "start_video"):
                reader.start_video()
            spot_video(reader, str(path), times, 8, "auto", StageClock(), print)
            frames += len(times)
        results[name] = {"ocr_frames_per_s": frames / (time.perf_counter() - started)}
        print(f"long {name}: {results[name]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="simple,temporal")
    parser.add_argument("--run", default=RUN, help="the tcd run of each profile's work dir")
    parser.add_argument("--out", type=Path, default=Path("work/bench-ocr-reuse"))
    args = parser.parse_args()
    results: dict[str, Any] = {"run": args.run}
    for profile in args.profiles.split(","):
        synth, source = (Path(p) for p in PROFILES[profile])
        results[profile] = run_profile(profile, synth, source, args.run, args.out)
    results["long"] = long_video(PipelineSettings(), args.out / "long")
    save("ocr_reuse", results)


if __name__ == "__main__":
    main()
