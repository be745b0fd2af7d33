"""Query latency of `tcd serve`, end to end over HTTP on loopback, beside `tcd search`.

A 10k-video feature fixture is written into a temporary work dir (manifest rows, and the
captions, frames, window-caption and query groups of the default settings: random unit
features, window captions drawn from a vocabulary; no video is decoded or OCR'd). The server
loads the `zero-shot` run, its index and the text encoder (MiniLM) once and holds the video
encodings in memory; each query is one `GET /api/search?q=...&k=100` on a kept-alive loopback
connection, query encoding included, thumbnails excluded (the page fetches them separately).
Reports p50/p99 over `--queries` distinct queries after a warm-up, the in-process share
(`Searcher.search`), and the wall time of one `tcd search` process per query today (start-up,
feature load and model load included).

    python -m bench.serve_latency [--videos 10000] [--queries 200] [--k 100] [--cli-runs 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlparse

import numpy as np

from bench.common import peak_rss_mb, save

WORDS = (
    "bakery sunrise bread hotel star inn motorway pharmacy city cinema goal score final "
    "menu pizza tomato soup noodle taxi bus stop station market fresh fish news weather "
    "gold medal cycling kenny tesco express garage repair open closed sale exit platform"
).split()
FRAME_DIM = 64  # clip-tiny-random's image embedding width (the default vision model)


def unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape, dtype=np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16)


def write_fixture(work_path: Path, n: int, seed: int = 0) -> None:
    """A work dir whose `n` test videos have every feature group of the default settings done."""
    from cache import WorkDir
    from pipeline.settings import PipelineSettings, StageGroups, save_settings

    rng = np.random.default_rng(seed)
    settings = PipelineSettings()
    work = WorkDir(work_path, create=True)
    save_settings(work.path, settings)
    root = work.path / "videos"
    root.mkdir()
    records = [
        {
            "id": f"v{i:05d}.mp4",
            "key": f"key{i}",
            "order": i,
            "split": "test",
            "path": str(root / f"v{i:05d}.mp4"),
            "duration": 6.0,
            "fps": 10.0,
            "n_frames": 60,
        }
        for i in range(n)
    ]
    work.manifest.videos.upsert(records)
    work.manifest.group.attrs.put({"dataset": "folder", "root": str(root)})
    keys = np.array([r["key"] for r in records], dtype=object)
    frames_t = settings.captions.frames
    text_dim = 384  # MiniLM
    groups = StageGroups.resolve(work, settings)
    texts = np.array(
        [
            [
                " ".join(rng.choice(WORDS, 3)).upper() if rng.random() < 0.7 else ""
                for _ in range(12)
            ]
            for _ in range(n)
        ],
        dtype=object,
    )
    mask = texts != ""
    data = {
        "captions": {
            "captions": ((frames_t,), str, texts.astype(str)),
            "mask": ((frames_t,), "bool", mask),
            "sample_share": ((), "float32", np.ones(n, np.float32)),
        },
        "frames": {
            "frames": ((frames_t, FRAME_DIM), "float16", unit(rng, (n, frames_t, FRAME_DIM))),
            "times": ((frames_t,), "float32", None),
        },
        "ocr_text": {
            "captions": (
                (frames_t, text_dim),
                "float16",
                unit(rng, (n, frames_t, text_dim)) * mask[..., None].astype(np.float16),
            ),
            "mask": ((frames_t,), "bool", mask),
            "instances": ((settings.captions.max_instances, text_dim), "float16", None),
            "instance_mask": ((settings.captions.max_instances,), "bool", None),
        },
    }
    for stage, arrays in data.items():
        group = getattr(groups, stage)
        group.ensure_rows(n)
        for name, (row_shape, dtype, values) in arrays.items():
            fill = "" if dtype is str else 0
            array = group.array(name, row_shape, dtype, fill)
            if values is not None:
                array[:] = values
        group.group["key"][:] = keys.astype(str)
        group.group["done"][:] = True
    groups.queries.array("query", (text_dim,), "float16")  # no captions: nothing to evaluate


def queries(count: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"the {' '.join(rng.choice(WORDS, 4))} sign number {i}" for i in range(count)]


def http_latencies(url: str, texts: list[str], k: int, warmup: int = 10) -> list[float]:
    """Milliseconds per `GET /api/search` (the body read and parsed), one connection."""
    where = urlparse(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    out = []
    for i, text in enumerate([*texts[:warmup], *texts]):
        started = time.perf_counter()
        connection.request("GET", "/api/search?" + urlencode({"q": text, "k": k}))
        response = connection.getresponse()
        body = json.loads(response.read())
        elapsed = 1e3 * (time.perf_counter() - started)
        if response.status != 200 or not body["results"]:
            raise RuntimeError(f"bad response {response.status}: {body}")
        if i >= warmup:
            out.append(elapsed)
    connection.close()
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(np.mean(ms)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--cli-runs", type=int, default=3)
    args = parser.parse_args()

    from cli.serve_app import create_app, running
    from cli.serve_cmd import build_service

    with tempfile.TemporaryDirectory(prefix="serve-latency-") as tmp:
        work = Path(tmp) / "work"
        started = time.perf_counter()
        write_fixture(work, args.videos)
        fixture_s = time.perf_counter() - started
        print(f"fixture: {args.videos} videos written in {fixture_s:.1f} s")
        started = time.perf_counter()
        service = build_service(work)
        service.warm()
        startup_s = time.perf_counter() - started
        print(
            f"server start (features, zero-shot run, index, encodings, MiniLM): {startup_s:.1f} s"
        )
        texts = queries(args.queries)
        searcher = service.searcher(service.default_split)
        inproc = []
        for text in texts[:50]:
            began = time.perf_counter()
            searcher.search(text, service.encode, top_k=10, k=args.k)
            inproc.append(1e3 * (time.perf_counter() - began))
        encode_ms = []
        for text in texts[:50]:
            began = time.perf_counter()
            service.encode([text])
            encode_ms.append(1e3 * (time.perf_counter() - began))
        with running(create_app(service)) as url:
            http_ms = http_latencies(url, texts, args.k)
        served = summary(http_ms)
        print(f"served over HTTP, K={args.k}: {served}")
        print(f"  in process (Searcher.search): {summary(inproc)}")
        print(f"  of which query encoding: {summary(encode_ms)}")
        cli_s = []
        for text in texts[: args.cli_runs]:
            began = time.perf_counter()
            command = [sys.executable, "-c", "from cli.main import main; main()"]
            done = subprocess.run(
                [*command, "search", "--work", str(work), "--k", str(args.k), "--json", text],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
            cli_s.append(time.perf_counter() - began)
        print(f"`tcd search` per query (one process each): {[round(s, 2) for s in cli_s]} s")
        save(
            "serve_latency",
            {
                "videos": args.videos,
                "k": args.k,
                "queries": args.queries,
                "fixture_s": round(fixture_s, 1),
                "server_start_s": round(startup_s, 1),
                "http": served,
                "in_process": summary(inproc),
                "query_encoding": summary(encode_ms),
                "tcd_search_process_s": [round(s, 2) for s in cli_s],
                "peak_rss_mb": round(peak_rss_mb()),
            },
        )


if __name__ == "__main__":
    main()
