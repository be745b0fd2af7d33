"""Head training and scoring at TextVR scale, on random cached features with a planted signal.

Train: `--videos` (7,800) videos with `--captions` (39,650) captions, T = 12, D = 512 (the
sizes of TextVR train); test: 2,727 videos x 2,727 captions. Each video's caption features and
its queries share a random key (the planted "scene text"), seen through a fixed random
rotation on the query side, so the identity-initialised head cannot read it (it scores near
chance) and a head must learn the rotation to climb above chance; frames carry only a coarse
scene code the queries do not name. Reports the untrained (the initialisation training starts
from) and the trained head's test t2v R@1 side by side, seconds per epoch (and of its
optimisation steps alone), validation R@1 per epoch, peak memory, exact t2v scoring time of
the full TCD head over test x test, and two-stage time (FAISS flat top-K, then the full head)
at K = 100.

    python -m bench.heads_scale [--epochs 2] [--lr 3e-4] [--videos 7800] [--test 2727]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import peak_rss_mb, save
from heads.config import HeadSettings, RunConfig, TrainSettings
from heads.data import Features
from heads.metrics import recall_at_1
from heads.run_dir import RunDir
from heads.scoring import score_matrix
from heads.train import initial_model, train
from retrieval.index import build_index, two_stage, video_embeddings

T = 12


def rotation(dim: int, seed: int = 1234) -> np.ndarray:
    """A fixed random orthogonal matrix (the same for train and test data)."""
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))[0]


def planted(n_videos: int, n_queries: int, seed: int, dim: int = 512) -> Features:
    """Features with the planted signal (see the module docstring); `seed` draws the data."""
    rng = np.random.default_rng(seed)
    D = dim  # noqa: N806 (the width, as in the docstring)

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
    noise = rng.standard_normal((len(query_video), D), dtype=np.float32)
    queries = unit(key[query_video] @ rotation(D).astype(np.float32) + 1.5 * noise)
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=7800)
    parser.add_argument("--captions", type=int, default=39650)
    parser.add_argument("--test", type=int, default=2727)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)  # configs/tcd.toml's
    parser.add_argument("--batch-size", type=int, default=42)  # the paper's
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512, help="feature width D (toy runs: less)")
    return parser.parse_args()


def timed_training(config: RunConfig, data: Features) -> dict[str, Any]:
    """Train in a temporary run folder: the trained head, its epoch records, the best one,
    and the wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.at(Path(tmp) / "run")
        started = time.perf_counter()
        best = train(config, data, run)
        seconds = time.perf_counter() - started
        head, _ = run.load_head(data.frames.shape[-1], data.queries.shape[-1], data.shared_space)
        return {"head": head, "history": run.epochs(), "best": best, "seconds": seconds}


def timed_r1(head: Any, data: Features) -> tuple[float, float]:
    """Exact t2v R@1 of `head` on `data`, and the seconds the full score matrix took."""
    started = time.perf_counter()
    sim = score_matrix(head, data)
    return recall_at_1(sim, data.query_video), time.perf_counter() - started


def main() -> None:
    args = parse_args()
    train_data = planted(args.videos, args.captions, seed=0, dim=args.dim)
    test_data = planted(args.test, args.test, seed=1, dim=args.dim)
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.epochs,  # no early stop: every epoch is timed
        val_fraction=args.val_fraction,
    )
    config = RunConfig(HeadSettings(), settings)
    untrained_r1, untrained_s = timed_r1(initial_model(config, train_data).head, test_data)
    print(
        f"untrained head (the initialisation): test t2v R@1 {untrained_r1:.1f}, {untrained_s:.0f} s"
    )
    trained = timed_training(config, train_data)
    history, best = trained["history"], trained["best"]
    epoch_s = [h["seconds"] for h in history]
    step_s = [h["train_seconds"] for h in history]  # the optimisation steps, without validation
    print(
        f"train: {len(history)} epochs, {np.mean(epoch_s):.1f} s/epoch "
        f"({np.mean(step_s):.1f} s of steps, the rest validation), best epoch "
        f"{best['epoch']} (val R@1 {best['val_r1']:.1f}), {trained['seconds']:.0f} s in all"
    )
    trained_r1, exact_s = timed_r1(trained["head"], test_data)
    print(
        f"exact scoring {len(test_data.queries)} x {test_data.n_videos}: {exact_s:.1f} s; "
        f"test t2v R@1 untrained {untrained_r1:.1f}, trained {trained_r1:.1f} "
        f"(chance {100 / test_data.n_videos:.2f})"
    )
    index = build_index(video_embeddings(trained["head"], test_data), "flat")
    result = two_stage(trained["head"], test_data, index, args.k)
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
            "D": args.dim,
            "lr": args.lr,
            "epochs_run": len(history),
            "seconds_per_epoch": float(np.mean(epoch_s)),
            "train_step_seconds_per_epoch": float(np.mean(step_s)),
            "val_videos": round(args.val_fraction * args.videos),
            "best_epoch": best["epoch"],
            "val_r1_per_epoch": [h["val_r1"] for h in history],
            "train_seconds": trained["seconds"],
            "test_size": args.test,
            "exact_scoring_s": exact_s,
            "chance_r1": 100 / test_data.n_videos,
            "test_t2v_r1_untrained": untrained_r1,
            "untrained_scoring_s": untrained_s,
            "test_t2v_r1": trained_r1,
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
