"""Incremental rebuilds as a share of a full build of the same synthetic set.

Full build = ocr (rapidocr) + captions + encode of `--videos` videos. Then: a no-op rerun;
10% new videos (a second work dir first built on 90% of the annotations, then given the
full files: only the new videos are processed); a window change `captions.xi=0.5` (captions
and caption encoding only; the OCR and frame reports must show zero rows computed). Stages
run in-process; each `tcd` command adds about 2 s of interpreter and torch start-up on top.

    python -m bench.incremental [--videos 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.common import save, synthetic_work
from cache import WorkDir
from pipeline.captions import run_captions
from pipeline.datasets import read_textvr
from pipeline.encode import run_encode
from pipeline.manifest import build_manifest
from pipeline.ocr import run_ocr
from pipeline.settings import CaptionSettings, EncodeSettings, OcrSettings

OCR, CAPTIONS, ENCODE = OcrSettings(), CaptionSettings(), EncodeSettings()


def build(work: WorkDir, captions: CaptionSettings = CAPTIONS) -> tuple[float, dict[str, int]]:
    """Run the three stages; wall seconds and rows computed per stage group."""
    started = time.perf_counter()
    reports = [run_ocr(work, OCR, progress=False), run_captions(work, captions, OCR, False, False)]
    reports += run_encode(work, ENCODE, captions, OCR, workers=2, progress=False)
    return time.perf_counter() - started, {r.stage: r.computed for r in reports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=30)
    args = parser.parse_args()
    results: dict = {"videos": args.videos}
    with tempfile.TemporaryDirectory() as tmp:
        data, work = synthetic_work(Path(tmp), args.videos)
        full, computed = build(work)
        results["full"] = {"seconds": full, "computed": computed}
        seconds, computed = build(work)
        results["noop"] = {"seconds": seconds, "ratio": seconds / full, "computed": computed}
        xi = replace(CAPTIONS, xi=0.5)
        seconds, computed = build(work, xi)
        results["xi_change"] = {"seconds": seconds, "ratio": seconds / full, "computed": computed}

        # 10% new videos: a second work dir built on 90% of each annotation file first
        originals = {p: p.read_text() for p in data.glob("TextVR_*.json")}
        paths = sorted({e["path"] for text in originals.values() for e in json.loads(text)})
        later = set(paths[len(paths) - max(1, len(paths) // 10) :])  # the videos added later
        for path, text in originals.items():
            path.write_text(json.dumps([e for e in json.loads(text) if e["path"] not in later]))
        second = WorkDir(Path(tmp) / "work90", create=True)
        build_manifest(second, read_textvr(data), progress=False)
        build(second)
        for path, text in originals.items():
            path.write_text(text)
        started = time.perf_counter()
        build_manifest(second, read_textvr(data), progress=False)
        _, computed = build(second)
        seconds = time.perf_counter() - started  # manifest update + the three stages
        results["new_10pct"] = {
            "new_videos": len(later),
            "seconds": seconds,
            "ratio": seconds / full,
            "computed": computed,
        }
    for key, value in results.items():
        print(f"{key}: {value}")
    save("incremental", results)


if __name__ == "__main__":
    main()
