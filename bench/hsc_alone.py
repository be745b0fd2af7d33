"""Why HSC does not calibrate inside TCD training, and whether it can at all.

Two measurements on a work dir's cached features (the temporal study's by default):

1. Gradient scale at initialisation: the norm of the gradient of HSC (each form) and of the
   trainer's contrastive loss (InfoNCE on the total and on each branch, scale 1/0.05) with
   respect to the input projections, on one batch of train videos (the configured batch
   size). Their ratio says how much of a step HSC steers at weight 1.
2. HSC alone: the head's HSC features trained with HSC only (Adam, `--steps` batches of train
   videos, no InfoNCE), then the calibration accuracy (share of frames whose nearest caption
   lies in their own shot, before time) and the HSC loss on the test split's videos, beside
   chance and the uniform guess, for each form.

    python -m bench.hsc_alone [--work work/study] [--config configs/tcd.toml] [--steps 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import save

FORMS = ("cycle", "cycle+index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("work/study"))
    parser.add_argument("--config", type=Path, default=Path("configs/tcd.toml"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from cache import WorkDir
    from cache.settings import load_settings
    from cli.common import features
    from heads.config import RunConfig
    from heads.losses import (
        calibration_accuracy,
        contrastive_loss,
        hsc_loss,
        hsc_uniform,
        shot_ids,
    )
    from heads.modules import build_head

    torch.set_num_threads(1)
    work = WorkDir(args.work)
    train, test = features(work, "train"), features(work, "test")
    config = load_settings(RunConfig, args.config)
    settings = config.train
    batch = min(settings.batch_size, train.n_videos)
    frame_dim, text_dim = train.frames.shape[-1], train.captions.shape[-1]

    def new_head() -> torch.nn.Module:
        torch.manual_seed(args.seed)
        return build_head(config.head, frame_dim, text_dim)

    # 1. gradient scale at initialisation, on the first batch of train videos with a query
    with_query = np.unique(train.query_video)[:batch]
    first = [int(np.flatnonzero(train.query_video == v)[0]) for v in with_query]
    videos = train.video_batch(with_query)
    query = torch.from_numpy(train.queries[first]).float()
    head = new_head()
    projections = [head.frame_in.weight, head.text_in.weight]

    def grad_norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, projections, retain_graph=True)
        return float(torch.sqrt(sum((g**2).sum() for g in grads)))

    nce, _ = contrastive_loss(head(query, **videos), torch.tensor(1 / settings.temperature))
    scale = {"contrastive": grad_norm(nce)}
    for form in FORMS:
        v, o = head.hsc_features(**videos)
        loss = hsc_loss(v, o, videos["caption_mask"], settings.hsc_temperature, form)
        scale[form] = grad_norm(loss)
    print(f"gradient norm on frame_in/text_in at init ({len(with_query)} train videos):")
    for name, value in scale.items():
        ratio = scale["contrastive"] / value if value else float("inf")
        print(f"  {name:12s} {value:.3e}   contrastive / this = {ratio:,.0f}")

    # 2. HSC alone, then calibration on the test videos
    shots = shot_ids(test.frames)
    test_videos = test.video_batch(slice(None))
    test_mask = test_videos["caption_mask"]

    def measure(head: torch.nn.Module, form: str) -> dict[str, float]:
        head.eval()  # no dropout while measuring
        with torch.no_grad():
            v, o = head.hsc_features(**test_videos)
            accuracy, chance, frames = calibration_accuracy(v, o, test_mask, shots)
            loss = hsc_loss(v, o, test_mask, settings.hsc_temperature, form)
        head.train()
        return {
            "calib_acc": round(accuracy, 3),
            "calib_chance": round(chance, 3),
            "calib_frames": frames,
            "test_hsc": round(float(loss), 4),
            "uniform": round(hsc_uniform(test_mask, form=form), 4),
        }

    alone = {}
    for form in FORMS:
        head = new_head()
        before = measure(head, form)
        optimiser = torch.optim.Adam(head.parameters(), lr=args.lr)
        generator = torch.Generator().manual_seed(args.seed)
        start, last = time.perf_counter(), float("nan")
        for _ in range(args.steps):
            index = torch.randperm(train.n_videos, generator=generator)[:batch].numpy()
            part = train.video_batch(np.sort(index))
            v, o = head.hsc_features(**part)
            loss = hsc_loss(v, o, part["caption_mask"], settings.hsc_temperature, form)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            last = loss.item()
        after = measure(head, form)
        alone[form] = {
            "before": before,
            "after": after,
            "train_hsc_last_batch": round(last, 4),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(
            f"HSC alone, {form}: test calibration {before['calib_acc']:.3f} -> "
            f"{after['calib_acc']:.3f} (chance {after['calib_chance']:.3f}, "
            f"{after['calib_frames']} frames); test HSC {before['test_hsc']:.4f} -> "
            f"{after['test_hsc']:.4f} (uniform {after['uniform']:.4f}); last train batch "
            f"{last:.4f}"
        )

    save(
        "hsc_alone",
        {
            "work": str(args.work),
            "config": str(args.config),
            "head": dataclasses.asdict(config.head),
            "steps": args.steps,
            "lr": args.lr,
            "batch": batch,
            "hsc_temperature": settings.hsc_temperature,
            "gradient_norm_at_init": scale,
            "hsc_alone": alone,
        },
    )


if __name__ == "__main__":
    main()
