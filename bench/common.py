"""What every benchmark shares: the machine description, peak memory, the results file.

Each benchmark prints its figures and writes `bench/results/<name>.json` with the machine it
ran on and the command that produced it. Benchmarks are not tests: nothing here asserts a
time.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU, cores, memory, library versions and the GPU (if any) of this machine."""
    import torch

    try:
        import faiss
    except ImportError:  # a GPU machine lent without it (bench.extraction --frames-only)
        faiss = None

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [x for x in cpuinfo.read_text().splitlines() if x.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    memory_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total = next(x for x in meminfo.read_text().splitlines() if x.startswith("MemTotal"))
        memory_gib = round(int(total.split()[1]) / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__ if faiss else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save(name: str, results: dict[str, Any], file: str | None = None) -> Path:
    """Write bench/results/<file or name>.json (bench.<name> is the command) and say where."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{file or name}.json"
    payload = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", f"bench.{name}", *sys.argv[1:]]),
        "machine": machine(),
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=1))
    print(f"results written to {path}")
    return path


def synthetic_work(root: Path, videos: int, seed: int = 0, workers: int = 2) -> tuple[Path, Any]:
    """A synthetic TextVR-layout set under root/synth (written by `workers` processes) and a
    work dir with its manifest."""
    from cache import WorkDir
    from pipeline.datasets import read_textvr
    from pipeline.manifest import build_manifest
    from pipeline.synth import generate

    data = root / "synth"
    generate(data, videos, seed=seed, workers=workers, progress=False)
    work = WorkDir(root / "work", create=True)
    build_manifest(work, read_textvr(data), progress=False)
    return data, work
