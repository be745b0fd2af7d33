"""What the OCR gate (`ocr.reuse`) buys and what it loses, per synthetic profile.

For each profile: a work dir of the set's test split only (`W/<profile>`), and for each gate
variant (off, frame, boxes, boxes with 16 crops per recogniser call, frame+boxes, all with
the box gate's first rule; the two box gates with each patch aligned within one pixel,
`reuse_shift` 1; frame+boxes with `reuse_edge` added; then also checking the last boxes'
texts before skipping the detector, `reuse_frame_texts`; and the default gate, which also
runs the detector on the changed regions of a frame only, `reuse_regions`) the ocr stage,
then captions and encode. Reported per variant:

- OCR frames/s: sampled frames / the stage's wall time less engine loading (one process,
  onnxruntime on 1 thread), and the share of frames (boxes) the gate read;
- key-text recall: the share of test videos whose key text (synth_meta.json) appears in one
  of their window captions;
- t2v R@1 of one trained tcd checkpoint (`--run`, a run dir of each profile's work dir, by
  `make ablations` / `make study`; the recorded run's were trained on ungated OCR, which
  `EXTRACT_SET=ocr.reuse=off` gives those targets) scored on each variant's caches.

On the simple profile, `off` and the default gate are then timed again `--repeats` times,
alternately, by one reader over the same videos (the spread one stage run cannot show). A
long video (10 minutes, from bench.memory's set) adds OCR frames/s per variant.

    python -m bench.ocr_reuse [--profiles simple,temporal] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import save
from cache import WorkDir
from heads.run_dir import RunDir
from pipeline.captions import run_captions
from pipeline.datasets import read_textvr
from pipeline.encode import run_encode
from pipeline.manifest import build_manifest
from pipeline.ocr import make_reader, ocr_sample_times, run_ocr, spot_video
from pipeline.settings import OcrSettings, PipelineSettings, StageGroups, resolve_settings
from pipeline.stage import OVER, StageClock
from pipeline.video import probe

# the box gate's first rule: before reuse_shift, reuse_edge, reuse_frame_texts and
# reuse_regions existed
FIRST_RULE = {
    "reuse_shift": 0,
    "reuse_edge": False,
    "reuse_frame_texts": False,
    "reuse_regions": False,
}
VARIANTS = {  # each names every gate setting it reads
    "off": {"reuse": "off"},
    "frame": {"reuse": "frame"},
    "boxes": {"reuse": "boxes", **FIRST_RULE},
    "boxes-rec16": {"reuse": "boxes", "rec_batch": 16, **FIRST_RULE},
    "frame+boxes": {"reuse": "frame+boxes", **FIRST_RULE},
    "boxes-shift1": {"reuse": "boxes", **FIRST_RULE, "reuse_shift": 1},
    "frame+boxes-shift1": {"reuse": "frame+boxes", **FIRST_RULE, "reuse_shift": 1},
    "frame+boxes-shift1-edge": {
        "reuse": "frame+boxes", **FIRST_RULE, "reuse_shift": 1, "reuse_edge": True
    },
    "frame+boxes-shift1-edge-texts": {  # the default before reuse_regions
        "reuse": "frame+boxes", **FIRST_RULE, "reuse_shift": 1, "reuse_edge": True,
        "reuse_frame_texts": True
    },
    "default": {  # OcrSettings' defaults (tests/test_ocr_reuse.py checks they are these)
        "reuse": "frame+boxes", "reuse_shift": 1, "reuse_edge": True, "reuse_frame_texts": True,
        "reuse_regions": True
    },
}  # fmt: skip
DEFAULT = "default"
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

    base, trained = resolve_settings(source), RunDir.named(source, run)
    if not trained.config_path.exists():
        raise SystemExit(f"{trained.path}: no trained run there (make demo / make study make one)")
    work = WorkDir(out / profile, create=True)
    build_manifest(work, read_textvr(synth, ("test",)), progress=False)
    copy = RunDir(work.path, "tcd").path  # the run as trained now (a retrained head replaces it)
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(trained.path, copy)
    frames = ocr_frames(work, base)
    results: dict[str, Any] = {"videos": len(work.manifest.videos), "ocr_frames": frames}
    for name, change in VARIANTS.items():
        settings = replace(base, ocr=replace(base.ocr, **change))
        run_ocr(work, settings.ocr, captions=settings.captions)  # a rerun computes nothing
        (report,) = StageGroups.resolve(work, settings).ocr.reports().values()  # the last run
        seconds = report["seconds"] - report["setup_s"]
        timing = {"ocr_seconds": seconds, "ocr_frames_per_s": frames / seconds}
        timing.update(
            (name, value)
            for name, value in report.get("figures", {}).items()
            if not name.startswith(OVER)  # (what the shares are over: merging's, not ours)
        )
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


def reading_rate(ocr: OcrSettings, paths: list[str], frames_t: int) -> float:
    """OCR frames/s of a fresh reader over `paths`, decoding included as in the stage (the
    engine is loaded, and warmed on the first video, before the clock starts)."""
    reader, frames = make_reader(ocr), 0
    spot_video(make_reader(ocr), paths[0], np.array([0.0]), 8, "auto", StageClock(), print)
    started = time.perf_counter()
    for path in paths:
        times = ocr_sample_times(probe(path).duration, ocr, frames_t)
        if hasattr(reader, "start_video"):
            reader.start_video()
        spot_video(reader, path, times, 8, "auto", StageClock(), print)
        frames += len(times)
    return frames / (time.perf_counter() - started)


def repeated(base: PipelineSettings, work: WorkDir, repeats: int) -> dict[str, Any]:
    """`off` and the default gate timed again `repeats` times, alternately, over the same
    videos: the run-to-run spread of the speed-up, which one stage run cannot show."""
    paths = [str(p) for p in work.manifest.videos.column("path")]
    rates: dict[str, list[float]] = {"off": [], DEFAULT: []}
    for k in range(repeats):
        for name in rates if k % 2 == 0 else reversed(list(rates)):
            ocr = replace(base.ocr, **VARIANTS[name])
            rates[name].append(reading_rate(ocr, paths, base.captions.frames))
            print(f"repeat {k} {name}: {rates[name][-1]:.2f} frames/s", flush=True)
    speedups = [gated / off for gated, off in zip(rates[DEFAULT], rates["off"], strict=True)]
    return {"ocr_frames_per_s": rates, "speedup": speedups}


def long_video(base: PipelineSettings, root: Path) -> dict[str, Any]:
    """OCR frames/s of each variant on the 10-minute videos of bench.memory's set."""
    from bench.memory import make_set

    work = WorkDir(root / "work") if (root / "work").exists() else WorkDir(make_set(root, 600))
    paths = [str(p) for p in work.manifest.videos.column("path")]
    results = {}
    for name, change in VARIANTS.items():
        rate = reading_rate(replace(base.ocr, **change), paths, base.captions.frames)
        results[name] = {"ocr_frames_per_s": rate}
        print(f"long {name}: {results[name]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="simple,temporal")
    parser.add_argument("--run", default=RUN, help="the tcd run of each profile's work dir")
    parser.add_argument("--out", type=Path, default=Path("work/bench-ocr-reuse"))
    parser.add_argument(
        "--repeats", type=int, default=2, help="times off and the default gate are timed again"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {"run": args.run}
    for profile in args.profiles.split(","):
        synth, source = (Path(p) for p in PROFILES[profile])
        results[profile] = run_profile(profile, synth, source, args.run, args.out)
        if profile == "simple" and args.repeats:  # the profile the speed target is set on
            base, work = resolve_settings(source), WorkDir(args.out / profile)
            results[profile]["repeated"] = repeated(base, work, args.repeats)
    results["long"] = long_video(PipelineSettings(), args.out / "long")
    save("ocr_reuse", results)


if __name__ == "__main__":
    main()
