"""Extraction throughput per stage on the synthetic set: decode, OCR, frame encode, text encode.

On `--videos` synthetic videos (384x216, 3-8 s): decode-only rates for OCR's sampling (2
frames/s, at most 64 per video) and encode's (T = 12 per video), then each stage as the
pipeline runs it (`run_ocr` with rapidocr, `run_captions`, `run_encode`), in frames/s and
videos/s, for each `--vision-models` (clip-tiny-random is the demo's; clip-vit-b32-random has
the real ViT-B/32 cost). For frame encoding: the model alone on decoded frames (batches of
64, after a warm-up), and the stage as run (frames decoded by `--workers` DataLoader workers,
model loading, worker start-up and cache writes included); `encode_vs_decode` is the stage's
rate over the decode-only rate (near 1 when decoding is the bottleneck, as on a GPU).

    python -m bench.extraction [--videos 24] [--vision-models clip-tiny-random,clip-vit-b32-random]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import peak_rss_mb, save, synthetic_work
from pipeline.captions import run_captions
from pipeline.encode import run_encode
from pipeline.models import load_vision
from pipeline.ocr import ocr_sample_times, run_ocr
from pipeline.settings import CaptionSettings, EncodeSettings, OcrSettings
from pipeline.video import read_frames, segment_centres


def decode_rate(paths: list[str], durations: np.ndarray, times_of) -> dict[str, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--vision-models", default="clip-tiny-random,clip-vit-b32-random")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    # the engine's own rate, ungated (what the OCR gate buys is bench.ocr_reuse's)
    ocr, captions = OcrSettings(reuse="off"), CaptionSettings()
    results: dict = {"videos": args.videos}
    with tempfile.TemporaryDirectory() as tmp:
        _, work = synthetic_work(Path(tmp), args.videos)
        videos = work.manifest.videos.read(["path", "duration"])
        paths, durations = [str(p) for p in videos["path"]], videos["duration"]
        results["decode_ocr_sampling"] = decode_rate(
            paths, durations, lambda d: ocr_sample_times(d, ocr, captions.frames)
        )
        results["decode_encode_sampling"] = decode_rate(
            paths, durations, lambda d: segment_centres(d, captions.frames)
        )
        decoded = np.concatenate(  # the encode stage's frames, for the model-only rate
            [
                b
                for path, d in zip(paths, durations, strict=True)
                for _, b in read_frames(path, segment_centres(float(d), captions.frames), 16)
            ]
        )
        report = run_ocr(work, ocr, progress=False)
        n_ocr = results["decode_ocr_sampling"]["frames"]
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
        n_frames = results["decode_encode_sampling"]["frames"]
        for model in args.vision_models.split(","):
            settings = EncodeSettings(vision_model=model)
            frames, text, queries = run_encode(
                work, settings, captions, ocr, workers=args.workers, progress=False
            )
            encoder = load_vision(model)
            sample = decoded[:64]
            encoder(sample)  # warm-up
            started = time.perf_counter()
            for start in range(0, len(decoded), 64):
                encoder(decoded[start : start + 64])
            model_rate = len(decoded) / (time.perf_counter() - started)
            results["encode"][model] = {
                "model_only_frames_per_s": model_rate,
                "frames_seconds": frames.seconds,
                "frames_per_s": n_frames / frames.seconds,
                "encode_vs_decode": (n_frames / frames.seconds)
                / results["decode_encode_sampling"]["frames_per_s"],
            }
            if text.computed:  # text groups do not depend on the vision model: first run only
                results["text_encode"] = {
                    "model": settings.text_model,
                    "caption_videos_per_s": args.videos / text.seconds,
                    "queries_per_s": queries.computed / queries.seconds,
                }
        results["peak_rss_mb"] = peak_rss_mb()
    for key, value in results.items():
        print(f"{key}: {value}")
    save("extraction", results)


if __name__ == "__main__":
    main()
