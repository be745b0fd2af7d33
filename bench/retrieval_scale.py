"""Retrieval at scale: FAISS flat vs IVF vs HNSW over clustered random 512-d embeddings.

For each collection size: build time, single-query latency (p50/p99 over `--latency-queries`
queries searched one by one), batch throughput (all queries at once) and recall@10 against
exact search, for the index settings of `retrieval.index.build_index` and a sweep of its
search parameter (IVF nprobe, HNSW efSearch). Vectors are unit-normalised points around
`--clusters` random centres, so an ANN index has structure to exploit, as real video
embeddings do. It measures the CPU indexes (`VideoIndex.cpu`), also on a machine with
faiss-gpu, where `tcd` would search a GPU copy of flat and IVF indexes.

    python -m bench.retrieval_scale [--sizes 10000,100000,1000000] [--hnsw-max 100000]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from bench.common import peak_rss_mb, save
from retrieval.index import build_index


def clustered(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors scattered around random centres (chunked to bound peak memory)."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        picks = rng.integers(0, len(centres), stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        x = centres[picks] + (0.8 / np.sqrt(dim)) * noise  # noise norm ~0.8, centres norm 1
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def measure(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, single: int) -> dict:
    latencies = []
    for q in queries[:single]:
        started = time.perf_counter()
        index.search(q[None], 10)
        latencies.append(1e3 * (time.perf_counter() - started))
    started = time.perf_counter()
    _, found = index.search(queries, 10)
    batch_s = time.perf_counter() - started
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "batch_qps": len(queries) / batch_s,
        "recall_at_10": recall_at_10(found, truth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="skip HNSW above this")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    queries = clustered(args.queries, args.dim, centres, rng)
    results = []
    for n in [int(x) for x in args.sizes.split(",")]:
        data = clustered(n, args.dim, centres, rng)
        started = time.perf_counter()
        flat = build_index(data, "flat").cpu  # the raw FAISS index: this measures FAISS
        flat_build = time.perf_counter() - started
        _, truth = flat.search(queries, 10)
        row = {"videos": n, "flat": {"build_s": flat_build, **measure(flat, queries, truth, 100)}}
        print(f"{n:>9,} flat  build {flat_build:6.1f} s  {row['flat']}")
        started = time.perf_counter()
        ivf = build_index(data, "ivf").cpu
        row["ivf"] = {"build_s": time.perf_counter() - started, "nlist": ivf.nlist, "sweep": {}}
        for nprobe in (4, 8, 16, 32, 64):
            ivf.nprobe = min(nprobe, ivf.nlist)
            row["ivf"]["sweep"][nprobe] = measure(ivf, queries, truth, args.latency_queries)
            print(f"{n:>9,} ivf   nprobe {nprobe:>3}  {row['ivf']['sweep'][nprobe]}")
        print(f"{n:>9,} ivf   build {row['ivf']['build_s']:6.1f} s (nlist {ivf.nlist})")
        if n <= args.hnsw_max:
            started = time.perf_counter()
            hnsw = build_index(data, "hnsw").cpu
            row["hnsw"] = {"build_s": time.perf_counter() - started, "sweep": {}}
            for ef in (32, 64, 128, 256):
                hnsw.hnsw.efSearch = ef
                row["hnsw"]["sweep"][ef] = measure(hnsw, queries, truth, args.latency_queries)
                print(f"{n:>9,} hnsw  efSearch {ef:>3}  {row['hnsw']['sweep'][ef]}")
            print(f"{n:>9,} hnsw  build {row['hnsw']['build_s']:6.1f} s")
            del hnsw
        else:
            row["hnsw"] = {"skipped": f"above --hnsw-max {args.hnsw_max} (build time on this CPU)"}
        row["peak_rss_mb"] = peak_rss_mb()
        results.append(row)
        del data, flat, ivf
    save("retrieval_scale", {"dim": args.dim, "queries": args.queries, "sizes": results})


if __name__ == "__main__":
    main()
