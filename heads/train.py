"""The head-only trainer: cached features in, `runs/<name>/` out.

One step: a batch of train videos, one random caption each; symmetric InfoNCE on the final
score and on each branch score (learned temperature, init 0.05), plus `lambda * L_hsc` for
TCD. AdamW, linear warm-up then cosine decay, gradient clipping, bf16 autocast on GPU, fixed
seeds. A held-out part of the train split (never the test split) is scored every epoch; the
best validation t2v R@1 is kept (ties, common on a small validation split, go to the lower
validation retrieval loss); training stops after `patience` epochs without gain.

`runs/<name>/`: config.toml (resolved), metrics.jsonl (one line per epoch), best.pt and
last.pt (tensors only, loaded with weights_only=True and strict=True), curves.png. A run
killed mid-way resumes from last.pt when started again with the same config.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cache.device import default_device
from cache.errors import TcdError
from heads.checkpoint import load_checkpoint, save_checkpoint
from heads.config import RunConfig
from heads.data import Features
from heads.losses import hsc_loss, info_nce, retrieval_loss
from heads.metrics import recall_at_1
from heads.modules import build_head
from heads.run_dir import RunDir, same_config
from heads.scoring import score_matrix


class Model(nn.Module):
    """A head plus its learned InfoNCE temperature."""

    def __init__(self, head: nn.Module, temperature: float):
        super().__init__()
        self.head = head
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))


def build_model(config: RunConfig, features: Features) -> Model:
    head = build_head(config.head, features.frames.shape[-1], features.queries.shape[-1])
    return Model(head, config.train.temperature)


def split_train_val(
    features: Features, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out videos of the train split (fixed by the seed)."""
    order = np.random.default_rng(seed).permutation(features.n_videos)
    n_val = max(1, int(round(fraction * features.n_videos))) if fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train(
    config: RunConfig,
    features: Features,
    run: RunDir,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the configured head on `features` (train split); return the best epoch's record."""
    settings = config.train
    config_text = run.create(config)
    finished = run.finished(config)
    if finished is not None:
        return finished  # this config already finished here: nothing to do
    torch.manual_seed(settings.seed)
    device = default_device()
    train_idx, val_idx = split_train_val(features, settings.val_fraction, settings.seed)
    val = features.subset(val_idx) if len(val_idx) else None
    captions_of = [np.flatnonzero(features.query_video == v) for v in range(features.n_videos)]
    missing = set(features.missing)  # failed videos: zeros would only teach noise
    train_idx = np.array(
        [v for v in train_idx if len(captions_of[v]) and features.video_ids[v] not in missing]
    )
    if len(train_idx) < 2:
        raise TcdError(
            f"too few train videos with features and captions ({len(train_idx)}) to train a head"
        )

    model = build_model(config, features).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    steps_per_epoch = max(1, len(train_idx) // settings.batch_size)
    total = steps_per_epoch * settings.epochs
    warmup = int(settings.warmup * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    start_epoch, best, history = 0, {"val_r1": -math.inf, "val_loss": math.inf, "epoch": -1}, []
    last = run.last
    if last.exists() and same_config(load_checkpoint(last).get("config", ""), config):
        state = load_checkpoint(last, model)  # same config: resume where the last run stopped
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        best = {"val_loss": math.inf, **json.loads(state["best"])}
        history = run.epochs()[:start_epoch]
    run.epochs_log.write_text("".join(json.dumps(h) + "\n" for h in history))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    use_hsc = settings.hsc and config.head.kind == "tcd"
    stale = 0 if best["epoch"] < 0 else start_epoch - 1 - best["epoch"]

    for epoch in range(start_epoch, settings.epochs):
        started = time.monotonic()
        # per-epoch seeds: a run resumed from last.pt continues exactly as if never stopped
        rng = np.random.default_rng([settings.seed, epoch])
        torch.manual_seed(settings.seed * 100_003 + epoch)
        model.train()
        order = rng.permutation(train_idx)
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            videos = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            picks = np.array([rng.choice(captions_of[v]) for v in videos])
            query = torch.from_numpy(features.queries[picks]).float().to(device)
            inputs = features.video_batch(videos, device)
            with autocast:
                scores = model.head(query=query, **inputs)
                scale = model.log_scale.exp().clamp(max=100)
                loss = info_nce(scores.total, scale)
                parts = {"nce": loss.item()}
                for name, branch in scores.branches.items():
                    branch_loss = info_nce(branch, scale)
                    loss = loss + branch_loss
                    parts[f"nce_{name}"] = branch_loss.item()
                if use_hsc:
                    v, o = model.head.hsc_inputs(
                        inputs["frames"], inputs["captions"], inputs["caption_mask"]
                    )
                    hsc = hsc_loss(
                        v.float(), o.float(), inputs["caption_mask"], settings.hsc_temperature
                    )
                    loss = loss + settings.hsc_weight * hsc
                    parts["hsc"] = hsc.item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            parts["loss"] = loss.item()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        record = {"epoch": epoch, **{k: v / steps_per_epoch for k, v in sums.items()}}
        record["lr"] = scheduler.get_last_lr()[0]
        record["temperature"] = float(1 / model.log_scale.exp().item())
        record["train_seconds"] = time.monotonic() - started
        if val is not None and len(val.queries):
            sim = score_matrix(model.head, val, settings.score_memory_gb * 1e9, device)
            record["val_r1"] = recall_at_1(sim, val.query_video)
            record["val_loss"] = retrieval_loss(sim, val.query_video, model.log_scale.exp().item())
        else:  # no validation split: keep the lowest training loss
            record["val_r1"], record["val_loss"] = -record["loss"], record["loss"]
        record["seconds"] = time.monotonic() - started
        history.append(record)
        with run.epochs_log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        # best = highest val R@1; a small validation split often ties (e.g. at 100%), and
        # the epoch whose true pairs score most clearly above the rest breaks the tie
        if (record["val_r1"], -record["val_loss"]) > (best["val_r1"], -best["val_loss"]):
            best, stale = record, 0
            save_checkpoint(run.best, model.head)
        else:
            stale += 1
        save_checkpoint(
            last,
            model,
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "best": json.dumps(best),
                "config": config_text,
            },
        )
        if progress:
            progress(record)
        if stale >= settings.patience:
            break
    plot_curves(history, run.curves)
    return best


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation R@1 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, left = plt.subplots(figsize=(6, 3.5))
    left.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="train loss")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss", color="tab:blue")
    right = left.twinx()
    right.plot(epochs, [h["val_r1"] for h in history], color="tab:red", label="val t2v R@1")
    right.set_ylabel("val t2v R@1 (%)", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
