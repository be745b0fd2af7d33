"""Peak memory of `ocr` and `encode` on a 10-minute video versus a 10-second one.

Two synthetic sets of 2 videos each (10 s and `--long-seconds`, 384x216 at 10 fps) go
through the stages, each stage in its own fresh process (decoding in-process, no DataLoader
workers, so the figure covers it); the peak resident memory of that process is reported.
`decode` is OCR's frame sampling decoded and dropped (the streaming part alone; only the
sampled frames, in batches, are ever held), `ocr` adds rapidocr, `encode` the captions and
the three encoders.

    python -m bench.memory [--long-seconds 600]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import save

STAGE = """
import sys
from bench.common import peak_rss_mb
from cache import WorkDir
from pipeline.captions import run_captions
from pipeline.encode import run_encode
from pipeline.ocr import run_ocr
from pipeline.settings import CaptionSettings, EncodeSettings, OcrSettings

OCR = OcrSettings(reuse="off")  # the engine's memory, ungated
work, stage = WorkDir(sys.argv[1]), sys.argv[2]
if stage == "decode":  # OCR's frame sampling, decoded and dropped: the streaming part alone
    from pipeline.ocr import ocr_sample_times
    from pipeline.video import read_frames
    videos = work.manifest.videos.read(["path", "duration"])
    for path, duration in zip(videos["path"], videos["duration"]):
        times = ocr_sample_times(float(duration), OCR, CaptionSettings().frames)
        for _ in read_frames(str(path), times, 8):
            pass
elif stage == "ocr":
    run_ocr(work, OCR, progress=False)
else:
    run_captions(work, CaptionSettings(), OCR, progress=False)
    run_encode(work, EncodeSettings(), CaptionSettings(), OCR, workers=0, progress=False)
print(peak_rss_mb())
"""


def make_set(root: Path, seconds: float) -> Path:
    from cache import WorkDir
    from pipeline.datasets import read_textvr
    from pipeline.manifest import build_manifest
    from pipeline.synth import SynthSettings, generate

    settings = SynthSettings(min_seconds=seconds, max_seconds=seconds)
    generate(root / "data", 2, seed=0, settings=settings, workers=2, progress=False)
    work = WorkDir(root / "work", create=True)
    build_manifest(work, read_textvr(root / "data"), progress=False)
    return work.path


def peak(work: Path, stage: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", STAGE, str(work), stage], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-seconds", type=float, default=10)
    parser.add_argument("--long-seconds", type=float, default=600)
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, seconds in (("short", args.short_seconds), ("long", args.long_seconds)):
            work = make_set(Path(tmp) / name, seconds)
            results[name] = {
                "seconds": seconds,
                "decode_peak_rss_mb": peak(work, "decode"),
                "ocr_peak_rss_mb": peak(work, "ocr"),
                "encode_peak_rss_mb": peak(work, "encode"),
            }
            print(f"{name} ({seconds:.0f} s videos): {results[name]}")
    for stage in ("decode", "ocr", "encode"):
        key = f"{stage}_peak_rss_mb"
        results[f"{stage}_long_over_short"] = results["long"][key] / results["short"][key]
        print(f"{stage}: long / short peak memory = {results[f'{stage}_long_over_short']:.2f}")
    save("memory", results)


if __name__ == "__main__":
    main()
