"""Head training and scoring at TextVR scale, on random cached features with a planted signal.

Train: `--videos` (7,800) videos with `--captions` (39,650) captions, T = 12, D = 512 (the
sizes of TextVR train); test: 2,727 videos x 2,727 captions. Each video's caption features and
its queries share a random key (the planted "scene text"), frames share a coarse scene code,
so a head that learns must climb far above chance. Reports seconds per epoch (and of its
optimisation steps alone), validation R@1 per epoch, peak memory, exact t2v scoring time
of the full TCD head over test x test, and two-stage time (FAISS flat top-K, then the full
head) at K = 100.

    python -m bench.heads_scale [--epochs 2] [--videos 7800] [--test 2727]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import peak_rss_mb, save
from heads.config import RunConfig, TrainSettings
from heads.data import Features
from heads.metrics import recall_at_1
from heads.modules import HeadSettings
from heads.run_dir import RunDir
from heads.scoring import score_matrix
from heads.train import train
from retrieval.index import build_index, two_stage, video_embeddings

T, D = 12, 512


def planted(n_videos: int, n_queries: int, seed: int) -> Features:
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-6)).astype(np.float16)

    key = rng.standard_normal((n_videos, D), dtype=np.float32)
    scene = rng.standard_normal((8, D), dtype=np.float32)[rng.integers(0, 8, n_videos)]
    frames = unit(scene[:, None] + 1.5 * rng.standard_normal((n_videos, T, D), dtype=np.float32))
    mask = rng.random((n_videos, T)) < 0.6
    mask[:, 0] = True
    noise = rng.standard_normal((n_videos, T, D), dtype=np.float32)
    captions = unit(key[:, None] + 1.5 * noise) * mask[..., None]
    extra = rng.integers(0, n_videos, max(0, n_queries - n_videos))  # more captions, random videos
    query_video = np.sort(np.concatenate([np.arange(min(n_videos, n_queries)), extra]))
    queries = unit(
        key[query_video] + 1.5 * rng.standard_normal((len(query_video), D), dtype=np.float32)
    )
    return Features(
        [f"v{i}" for i in range(n_videos)],
        frames,
        captions,
        mask,
        np.zeros((n_videos, 1, D), np.float16),
        np.zeros((n_videos, 1), bool),
        queries,
        query_video,
        [""] * len(query_video),
        [],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=7800)
    parser.add_argument("--captions", type=int, default=39650)
    parser.add_argument("--test", type=int, default=2727)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()

    train_data = planted(args.videos, args.captions, seed=0)
    test_data = planted(args.test, args.test, seed=1)
    config = RunConfig(
        HeadSettings(),
        TrainSettings(epochs=args.epochs, lr=3e-4, patience=2, val_fraction=args.val_fraction),
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.at(Path(tmp) / "run")
        started = time.perf_counter()
        best = train(config, train_data, run)
        train_s = time.perf_counter() - started
        history = [json.loads(x) for x in run.epochs_log.read_text().splitlines()]
        head, _ = run.load_head(D, D)
    epoch_s = [h["seconds"] for h in history]
    step_s = [h["train_seconds"] for h in history]  # the optimisation steps, without validation
    print(
        f"train: {len(history)} epochs, {np.mean(epoch_s):.1f} s/epoch "
        f"({np.mean(step_s):.1f} s of steps, the rest validation), best epoch "
        f"{best['epoch']} (val R@1 {best['val_r1']:.1f}), {train_s:.0f} s in all"
    )

    started = time.perf_counter()
    sim = score_matrix(head, test_data)
    exact_s = time.perf_counter() - started
    print(
        f"exact scoring {sim.shape[0]} x {sim.shape[1]}: {exact_s:.1f} s, "
        f"t2v R@1 {recall_at_1(sim, test_data.query_video):.1f}"
    )
    index = build_index(video_embeddings(head, test_data), "flat")
    result = two_stage(head, test_data, index, args.k)
    print(
        f"two-stage K={args.k}: stage 1 {result.stage1_s:.2f} s, stage 2 "
        f"{result.stage2_s:.1f} s, true video in K {result.recall_in_k:.1f}%"
    )
    save(
        "heads_scale",
        {
            "train_videos": args.videos,
            "train_captions": len(train_data.queries),
            "T": T,
            "D": D,
            "epochs_run": len(history),
            "seconds_per_epoch": float(np.mean(epoch_s)),
            "train_step_seconds_per_epoch": float(np.mean(step_s)),
            "val_videos": round(args.val_fraction * args.videos),
            "best_epoch": best["epoch"],
            "val_r1_per_epoch": [h["val_r1"] for h in history],
            "train_seconds": train_s,
            "test_size": args.test,
            "exact_scoring_s": exact_s,
            "test_t2v_r1": recall_at_1(sim, test_data.query_video),
            "two_stage": {
                "k": args.k,
                "stage1_s": result.stage1_s,
                "stage2_s": result.stage2_s,
                "recall_in_k": result.recall_in_k,
            },
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
