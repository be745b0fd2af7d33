"""The Ray executor against a single process, on the OCR stage (the pipeline's cost).

One synthetic set, one manifest, then the ocr stage (rapidocr, default settings) on fresh
copies of that work dir: in this process, and with `--executor ray` on a local Ray with 1 and
2 actors (each at its default CPU share: all of this machine's cores but one, shared), beside
one process whose OCR engine runs 2 onnxruntime threads instead of 1 (`--threads 2`). Prints
rows/s for each, the Ray start-up (`ray.init`, once) apart, and the executor's overhead per
row: (Ray wall time with 1 actor - single-process wall time) / rows, which holds the actors'
start-up, their own OCR engine load and the coordinator's bookkeeping. Each Ray result is
checked bitwise against the single-process one.

    python -m bench.ray_executor [--videos 24]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import save, synthetic_work
from cache import WorkDir
from pipeline.distributed import RayOptions, ray_session, run_on_ray
from pipeline.ocr import run_ocr
from pipeline.settings import OcrSettings, PipelineSettings

SETTINGS = PipelineSettings(ocr=OcrSettings(reuse="off"))  # as recorded: the executor, ungated


def ocr_arrays(work: Path) -> dict[str, np.ndarray]:
    """Every array of the work dir's ocr group (data, done, key, error)."""
    (group,) = [g for g in WorkDir(work).stages() if g.stage == "ocr"]
    return {name: np.asarray(group.group[name][:]) for name in group.group.array_keys()}


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24)
    args = parser.parse_args()
    results: dict = {"videos": args.videos, "stage": "ocr (rapidocr, default settings)"}
    with tempfile.TemporaryDirectory() as tmp:
        _, manifest = synthetic_work(Path(tmp), args.videos)

        def fresh(name: str) -> WorkDir:
            return WorkDir(shutil.copytree(manifest.path, Path(tmp) / name))

        work = fresh("single")
        started = time.perf_counter()
        report = run_ocr(work, SETTINGS.ocr, progress=False, captions=SETTINGS.captions)
        single = time.perf_counter() - started
        rows = report.computed
        reference = ocr_arrays(work.path)
        results["single_process"] = {"seconds": single, "rows_per_s": rows / single}

        # threads instead of processes: one process, onnxruntime on 2 intra-op threads
        work = fresh("single2")
        started = time.perf_counter()
        run_ocr(work, SETTINGS.ocr, progress=False, captions=SETTINGS.captions, threads=2)
        seconds = time.perf_counter() - started
        results["single_process_2_threads"] = {
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "equal_to_single_process": same(ocr_arrays(work.path), reference),
        }

        started = time.perf_counter()
        with ray_session() as ray:
            results["ray_init_s"] = time.perf_counter() - started
            results["cluster_cpus"] = ray.cluster_resources().get("CPU")
            for actors in (1, 2):
                work = fresh(f"ray{actors}")
                started = time.perf_counter()
                (report,) = run_on_ray(
                    work, SETTINGS, ["ocr"], RayOptions(actors=actors), progress=False
                )
                seconds = time.perf_counter() - started
                results[f"ray_{actors}_actor"] = {
                    "seconds": seconds,
                    "rows_per_s": report.computed / seconds,
                    "setup_s_all_actors": report.setup_s,
                    "equal_to_single_process": same(ocr_arrays(work.path), reference),
                }
        one = results["ray_1_actor"]["seconds"]
        results["overhead_per_row_s"] = (one - single) / rows
    for key, value in results.items():
        print(f"{key}: {value}")
    save("ray_executor", results)


if __name__ == "__main__":
    main()
