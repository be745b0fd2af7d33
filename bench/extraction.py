"""Extraction throughput per stage on the synthetic set: decode, OCR, frame encode, text encode.

On `--videos` synthetic videos (384x216, 3-8 s): decode-only rates for OCR's sampling (2
frames/s, at most 64 per video) and encode's (T = 12 per video), then each stage as the
pipeline runs it (`run_ocr` with rapidocr, `run_captions`, `run_encode`), in frames/s and
videos/s, for each `--vision-models` (clip-tiny-random is the demo's; clip-vit-b32-random has
the real ViT-B/32 cost; bf16 autocast on a GPU) and each of `--batch-sizes` (frames per
forward pass). For frame encoding: the model alone on decoded frames (in batches of that
size, after a warm-up), and the stage as run (frames decoded by `--workers` DataLoader
workers; model loading, worker start-up and cache writes included; `steady_` leaves the model
loading out). `encode_vs_decode` is the stage's rate over one process's decode-only rate,
`encode_vs_parallel_decode` over decoding alone by the stage's own workers (near 1 when
decoding is the bottleneck, as it should be on a GPU). `handoff`: what the stage's process
spends per video to take a decoded video that is already waiting and to read its frames once
(`handoff_ms`), with the frame slots it uses (`pipeline.frame_loader`) and with a fresh
shared tensor per video (what it did before them).

`--profile` then encodes the frames once more, under cProfile, with the first model and batch
size, and keeps the stage's process's costliest calls by own time (`frames_profile`): where
that process spends its time, at profiling's cost (not a rate to quote).

`--frames-only` times decoding and the frames group alone (no OCR, captions or text models:
what a GPU machine without the OCR engine can run) and writes `extraction_frames.json`.
One-process decoding and the model-only rate use the first 256 videos.

    python -m bench.extraction [--videos 24] [--vision-models clip-tiny-random,clip-vit-b32-random]
    python -m bench.extraction --frames-only --videos 3000 --workers 12 \\
        --vision-models clip-vit-b32-random --batch-sizes 512 [--profile]   # on a GPU machine
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import peak_rss_mb, save, synthetic_work
from cache import WorkDir
from pipeline.captions import run_captions
from pipeline.encode import default_batch_size, run_encode, run_encode_frames
from pipeline.frame_loader import (
    PREFETCH,
    decoded_videos,
    decoding_workers,
    shared_memory_room,
)
from pipeline.models import load_vision
from pipeline.ocr import ocr_sample_times, run_ocr
from pipeline.settings import CaptionSettings, EncodeSettings, OcrSettings
from pipeline.video import Decoder, read_frames, segment_centres

SAMPLE_VIDEOS = 256  # one-process decoding and the model-only rate use at most these
HANDOFF_ROUNDS = 6  # rounds of taking the videos the workers hold (`handoff_ms`)
PROFILE_CALLS = 30  # the calls `--profile` keeps, by own time


def decode_rate(paths: list[str], durations: np.ndarray, times_of) -> dict[str, float]:
    """Decoding alone in this process, `times_of(duration)` frames per video."""
    started, frames = time.perf_counter(), 0
    for path, duration in zip(paths, durations, strict=True):
        for _, batch in read_frames(path, times_of(float(duration)), 16):
            frames += len(batch)
    seconds = time.perf_counter() - started
    return {
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "videos_per_s": len(paths) / seconds,
    }


def parallel_decode_rate(videos: dict[str, np.ndarray], n_frames: int, workers: int) -> dict:
    """Decoding alone as the encode stage does it (its loader, its workers, start-up
    included), with no model: the rate the stage cannot beat."""
    rows = np.arange(len(videos["path"]))
    started, frames = time.perf_counter(), 0
    for _, times, batch, _ in decoded_videos(rows, videos, n_frames, Decoder.auto, workers):
        frames += len(batch) if times is not None else 0
    seconds = time.perf_counter() - started
    return {
        "workers": workers,
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "videos_per_s": len(rows) / seconds,
    }


def handoff_ms(videos: dict[str, np.ndarray], n_frames: int, workers: int, slots: bool) -> dict:
    """The stage's process receiving decoded videos that are already waiting (it sleeps while
    the workers fill their queues, then takes what they hold): median ms per video to take
    one (the last one's frames let go included), and to read its frames once into a buffer
    (what a copy to the GPU does), with frame slots or with a fresh shared tensor per video.
    Needs `ROWS_PER_WORKER` videos per worker (fewer decode in this process: no handoff)."""
    rows = np.arange(len(videos["path"]))
    used = decoding_workers(workers, len(rows))
    if not used:
        return {"skipped": f"{len(rows)} videos start no decoding worker"}
    items = decoded_videos(rows, videos, n_frames, Decoder.auto, workers, use_slots=slots)
    frames = np.asarray(next(items)[2])  # the workers start, untimed
    buffer = np.empty_like(frames)
    rounds = min(HANDOFF_ROUNDS, (len(rows) - 1) // (PREFETCH * used))
    take, read = [], []
    for _ in range(rounds):
        time.sleep(0.5)
        for _ in range(PREFETCH * used):
            del frames
            started = time.perf_counter()
            item = next(items)
            taken = time.perf_counter()
            frames = np.asarray(item[2])
            del item
            if frames.shape == buffer.shape:
                np.copyto(buffer, frames)
                read.append(time.perf_counter() - taken)
            take.append(taken - started)
    del frames
    items.close()
    return {
        "workers": used,
        "videos": len(take),
        "take_ms": 1000 * float(np.median(take)),
        "read_ms": 1000 * float(np.median(read)),
    }


def profile_frames(stage_args: tuple) -> dict:
    """The frames stage run under cProfile: its process's `PROFILE_CALLS` costliest calls by
    own time, as pstats prints them (calls, own and cumulative seconds, where)."""
    profile = cProfile.Profile()
    report = profile.runcall(run_encode_frames, *stage_args, progress=False)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(PROFILE_CALLS)
    lines = text.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    calls = [line.rstrip() for line in lines[start:] if line.strip()]
    return {"videos_encoded": report.computed, "seconds": report.seconds, "calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--vision-models", default="clip-tiny-random,clip-vit-b32-random")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="frames per forward pass, comma-separated, each encoding the set afresh (the "
        "stage's --batch-size; default: the stage's default, 64 on the CPU, 512 on a GPU)",
    )
    parser.add_argument("--frames-only", action="store_true")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then encode the frames once more under cProfile (the first model and batch size)",
    )
    args = parser.parse_args()
    # the engine's own rate, ungated (what the OCR gate buys is bench.ocr_reuse's)
    ocr, captions = OcrSettings(reuse="off"), CaptionSettings()
    batch_sizes = [int(b) for b in (args.batch_sizes or str(default_batch_size())).split(",")]
    results: dict = {"videos": args.videos, "workers": args.workers, "batch_sizes": batch_sizes}
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        _, work = synthetic_work(Path(tmp), args.videos, workers=cores)
        videos = work.manifest.videos.read(["path", "duration", "error"])
        paths, durations = [str(p) for p in videos["path"]], videos["duration"]
        sample = slice(0, SAMPLE_VIDEOS)
        if not args.frames_only:
            results["decode_ocr_sampling"] = decode_rate(
                paths[sample],
                durations[sample],
                lambda d: ocr_sample_times(d, ocr, captions.frames),
            )
        results["decode_encode_sampling"] = decode_rate(
            paths[sample], durations[sample], lambda d: segment_centres(d, captions.frames)
        )
        results["decode_encode_parallel"] = parallel_decode_rate(
            videos, captions.frames, args.workers
        )
        results["handoff"] = {
            crossing: handoff_ms(videos, captions.frames, args.workers, crossing == "slots")
            for crossing in ("slots", "tensors")
        }
        # slots need room for themselves and SHARED_MEMORY_NEEDED more, or frames cross as tensors
        results["handoff"]["shared_memory_free_gib"] = shared_memory_room() / 2**30
        decoded = np.concatenate(  # the encode stage's frames, for the model-only rate
            [
                b
                for path, d in zip(paths[sample], durations[sample], strict=True)
                for _, b in read_frames(path, segment_centres(float(d), captions.frames), 16)
            ]
        )
        if not args.frames_only:
            report = run_ocr(work, ocr, progress=False)
            n_ocr = results["decode_ocr_sampling"]["frames"] * args.videos / len(paths[sample])
            results["ocr"] = {
                "engine": ocr.engine,
                "seconds": report.seconds,
                "frames_per_s": n_ocr / report.seconds,
                "videos_per_s": args.videos / report.seconds,
            }
            report = run_captions(work, captions, ocr, progress=False)
            results["captions"] = {
                "seconds": report.seconds,
                "videos_per_s": args.videos / report.seconds,
            }
        results["encode"] = {}
        n_frames = results["decode_encode_parallel"]["frames"]
        runs = [(m, b) for m in args.vision_models.split(",") for b in batch_sizes]
        fresh = Path(tmp) / "fresh"  # the work dir before encoding: one copy per later run
        if len(runs) > 1 or args.profile:
            shutil.copytree(work.path, fresh)
        for run, (model, batch) in enumerate(runs):
            if run:
                work = WorkDir(shutil.copytree(fresh, Path(tmp) / f"work-{run}"))
            settings = EncodeSettings(vision_model=model)
            stage_args = (work, settings, captions, ocr, batch, args.workers)
            if args.frames_only:
                frames = run_encode_frames(*stage_args, progress=False)
            else:
                frames, text, queries = run_encode(*stage_args, progress=False)
            encoder = load_vision(model)
            encoder(decoded[:batch])  # warm-up
            started = time.perf_counter()
            for start in range(0, len(decoded), batch):
                encoder(decoded[start : start + batch])
            model_rate = len(decoded) / (time.perf_counter() - started)
            rate = n_frames / frames.seconds
            name = model if len(batch_sizes) == 1 else f"{model}, batch {batch}"
            results["encode"][name] = {
                "model_only_frames_per_s": model_rate,
                "videos_encoded": frames.computed,
                "frames_seconds": frames.seconds,
                "frames_per_s": rate,
                "steady_frames_per_s": n_frames / (frames.seconds - frames.setup_s),
                "frames_phases_s": {  # read: the main process waiting on the decoding workers
                    phase: getattr(frames, f"{phase}_s")
                    for phase in ("setup", "read", "compute", "write")
                },
                "encode_vs_decode": rate / results["decode_encode_sampling"]["frames_per_s"],
                "encode_vs_parallel_decode": rate
                / results["decode_encode_parallel"]["frames_per_s"],
            }
            if not args.frames_only and "text_encode" not in results:  # the first run's
                results["text_encode"] = {
                    "model": settings.text_model,
                    "caption_videos_per_s": args.videos / text.seconds,
                    "queries_per_s": queries.computed / queries.seconds,
                }
        if args.profile:
            model, batch = runs[0]
            work = WorkDir(shutil.copytree(fresh, Path(tmp) / "work-profile"))
            settings = EncodeSettings(vision_model=model)
            results["frames_profile"] = profile_frames(
                (work, settings, captions, ocr, batch, args.workers)
            )
        results["peak_rss_mb"] = peak_rss_mb()
    for key, value in results.items():
        if key == "frames_profile":
            print(f"{key}: {value['videos_encoded']} videos in {value['seconds']:.1f} s")
            print(*value["calls"], sep="\n  ")
        else:
            print(f"{key}: {value}")
    save("extraction", results, "extraction_frames" if args.frames_only else None)


if __name__ == "__main__":
    main()
