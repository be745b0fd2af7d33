"""The head-only trainer: cached features in, `runs/<name>/` out.

One step: a batch of train videos, one random caption each; symmetric InfoNCE on the final
score and on each branch score (learned temperature, init 0.05), plus the head's auxiliary
losses (`lambda * L_hsc` for TCD). AdamW, linear warm-up then cosine decay, gradient clipping,
bf16 autocast on GPU, fixed seeds. A held-out part of the train split (never the test split)
is scored every epoch; the epoch with the lowest validation retrieval loss is kept
(`train.select = "loss"`, the default: cross-entropy of each held-out caption over the
held-out videos at its best scale, which keeps falling after R@1 saturates on a small split;
heads/losses.py `retrieval_loss`), or with the best validation R@1, ties to the lower loss
(`"r1"`); training stops after `patience` epochs without gain. Each epoch also logs HSC's
diagnostics: its loss beside a uniform guess's, and the calibration accuracy (share of
held-out frames whose nearest caption lies in their own shot) beside chance.

`train.epochs = 0`, and every zero-shot head, keep the initial head as the run's checkpoint
(the untrained row of a study). With `head.fusion = "validation"`, the branch weights are
chosen after training on the held-out split (lowest retrieval loss over a 0.1 grid of the
simplex) and saved in best.pt.

`train()` runs the steps of `Trainer`: resume (from last.pt when it holds the same config, so
a run killed mid-way continues exactly as if never stopped), then per epoch: train, validate,
checkpoint. The run's files are `RunDir`'s (heads/run_dir.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cache.atomic import atomic_write
from cache.device import default_device
from cache.errors import TcdError
from heads.checkpoint import load_checkpoint, save_checkpoint, update_checkpoint
from heads.config import RunConfig, TrainSettings
from heads.data import Features
from heads.losses import (
    calibration_accuracy,
    contrastive_loss,
    hsc_uniform,
    retrieval_loss,
    shot_ids,
)
from heads.metrics import recall_at_1
from heads.modules import ProjectedHead, build_head
from heads.run_dir import RunDir
from heads.scoring import score_branches, score_matrix

Record = dict[str, Any]


class Model(nn.Module):
    """A head plus its learned InfoNCE temperature."""

    def __init__(self, head: ProjectedHead, temperature: float):
        super().__init__()
        self.head = head
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))


AUXILIARY_STREAM = 1  # tells the auxiliary losses' seeds from any other seed of a run


def initial_model(config: RunConfig, features: Features) -> Model:
    """The model training starts from (seeded by `train.seed`): `.head` is the untrained head
    a trained one is compared with."""
    torch.manual_seed(config.train.seed)
    head = build_head(
        config.head, features.frames.shape[-1], features.queries.shape[-1], features.shared_space
    )
    return Model(head, config.train.temperature)


def split_train_val(
    features: Features, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out videos of the train split (fixed by the seed)."""
    order = np.random.default_rng(seed).permutation(features.n_videos)
    n_val = max(1, int(round(fraction * features.n_videos))) if fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_videos(
    features: Features, settings: TrainSettings
) -> tuple[np.ndarray, Features | None, list[np.ndarray]]:
    """The videos to train on (with features and captions), the held-out split (None when
    `val_fraction` is 0), and each video's caption indices."""
    train_idx, val_idx = split_train_val(features, settings.val_fraction, settings.seed)
    captions_of = [np.flatnonzero(features.query_video == v) for v in range(features.n_videos)]
    missing = set(features.missing)  # failed videos: zeros would only teach noise
    usable = [v for v in train_idx if len(captions_of[v]) and features.video_ids[v] not in missing]
    if len(usable) < 2:
        raise TcdError(
            f"too few train videos with features and captions ({len(usable)}) to train a head"
        )
    val = features.subset(val_idx) if len(val_idx) else None
    return np.array(usable), val, captions_of


def trainable(
    config: RunConfig, features: Features
) -> tuple[np.ndarray, Features | None, list[np.ndarray]]:
    """`train_videos`, refused (`TcdError`) where the config cannot train on `features`: too
    few train videos, or `head.fusion = "validation"` without held-out captions."""
    train_idx, val, captions_of = train_videos(features, config.train)
    if config.head.fusion == "validation" and (val is None or not len(val.queries)):
        held_out = 0 if val is None else val.n_videos
        raise TcdError(
            f"head.fusion = 'validation' chooses the branch weights on held-out captions, "
            f"but the {held_out} held-out video(s) have none; raise train.val_fraction"
        )
    return train_idx, val, captions_of


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up over `warmup` steps, then cosine decay."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class Trainer:
    """One run's training state (model, optimiser, schedule, data split, best epoch) and its
    steps: `resume`, then per epoch `train_epoch`, `validate`, `checkpoint`."""

    def __init__(self, config: RunConfig, features: Features, run: RunDir, config_text: str):
        self.config, self.settings, self.run = config, config.train, run
        self.features, self.config_text = features, config_text
        self.device = default_device()
        self.train_idx, self.val, self.captions_of = trainable(config, features)
        self.model = initial_model(config, features).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay
        )
        self.steps_per_epoch = max(1, len(self.train_idx) // self.settings.batch_size)
        total = self.steps_per_epoch * self.settings.epochs
        schedule = warmup_cosine(total, int(self.settings.warmup * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.start_epoch, self.stale, self.history = 0, 0, []
        self.best: Record = {"val_r1": -math.inf, "val_loss": math.inf, "epoch": -1}
        # HSC diagnostics: a uniform guess on the train videos' masks; shots of held-out videos
        mask = torch.from_numpy(features.caption_mask[self.train_idx])
        self.hsc_uniform = hsc_uniform(mask, form=self.settings.hsc_form)
        self.probe = self.val or features.subset(self.train_idx)  # where calibration is measured
        self.shots = shot_ids(self.probe.frames)

    def resume(self) -> None:
        """Continue from last.pt when it holds this config; rewrite the epoch log to match."""
        last = self.run.last
        data = trained_data(self.config, self.features.data_key)
        if last.exists() and self.run.holds(self.config, self.features.source, data=data):
            state = load_checkpoint(last, self.model)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.start_epoch = int(state["epoch"]) + 1
            self.best = {"val_loss": math.inf, **json.loads(state["best"])}
            self.history = self.run.epochs()[: self.start_epoch]
            if self.best["epoch"] >= 0:  # epochs since the best one
                self.stale = self.start_epoch - 1 - self.best["epoch"]
        atomic_write(self.run.epochs_log, "".join(json.dumps(h) + "\n" for h in self.history))

    def train_epoch(self, epoch: int, started: float) -> Record:
        """One pass over the train videos; the epoch's mean losses, learning rate, temperature."""
        # per-epoch seeds: a run resumed from last.pt continues exactly as if never stopped
        rng = np.random.default_rng([self.settings.seed, epoch])
        torch.manual_seed(self.settings.seed * 100_003 + epoch)
        self.model.train()
        order = rng.permutation(self.train_idx)
        size, sums = self.settings.batch_size, {}
        for step in range(self.steps_per_epoch):
            videos = order[step * size : (step + 1) * size]
            picks = np.array([rng.choice(self.captions_of[v]) for v in videos])
            for key, value in self.step(videos, picks, (epoch, step)).items():
                sums[key] = sums.get(key, 0.0) + value
        record = {"epoch": epoch, **{k: v / self.steps_per_epoch for k, v in sums.items()}}
        if "hsc" in record:
            record["hsc_uniform"] = self.hsc_uniform
        record["lr"] = self.scheduler.get_last_lr()[0]
        record["temperature"] = float(1 / self.model.log_scale.exp().item())
        record["train_seconds"] = time.monotonic() - started
        return record

    def step(
        self, videos: np.ndarray, picks: np.ndarray, when: tuple[int, int]
    ) -> dict[str, float]:
        """One optimisation step on `videos` with caption `picks`; each loss part's value.
        `when` (epoch, step) seeds the auxiliary losses' own random draws."""
        query = torch.from_numpy(self.features.queries[picks]).float().to(self.device)
        inputs = self.features.video_batch(videos, self.device)
        head = self.model.head
        with _autocast(self.device):
            scores = head(query=query, **inputs)
            loss, parts = contrastive_loss(scores, self.model.log_scale.exp().clamp(max=100))
            for name, (weight, extra) in self.auxiliary_losses(inputs, when).items():
                loss = loss + weight * extra
                parts[name] = extra.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        parts["loss"] = loss.item()
        return parts

    def auxiliary_losses(
        self, inputs: dict[str, torch.Tensor], when: tuple[int, int]
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """The head's auxiliary losses (HSC), their dropout drawn from a generator of their own
        (seeded by the run's seed and `when`): drawn from the main one, switching HSC on or
        off changed every later dropout mask of the retrieval loss, so `tcd-no-hsc` measured
        another dropout stream as well as HSC's absence."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = np.random.SeedSequence([self.settings.seed, *when, AUXILIARY_STREAM])
            torch.manual_seed(int(seed.generate_state(1)[0]))
            return self.model.head.auxiliary_losses(inputs, self.settings)

    def validate(self, record: Record) -> None:
        """Add the held-out split's t2v R@1 and retrieval loss to `record` (without held-out
        captions: no R@1, and the training loss as `val_loss`, so the lowest loss is kept),
        and the calibration accuracy."""
        record.update(self.calibration())
        val = self.val
        if val is None or not len(val.queries):
            record["val_loss"] = record.get("loss", math.inf)  # (none yet when untrained)
            return
        memory = self.settings.score_memory_gb * 1e9
        sim = score_matrix(self.model.head, val, memory, self.device)
        record["val_r1"] = recall_at_1(sim, val.query_video)
        record["val_loss"] = retrieval_loss(sim, val.query_video)

    @torch.no_grad()
    def calibration(self) -> Record:
        """Calibration accuracy and its chance level on the held-out videos (the train videos
        without a held-out split), from the head's features before time; {} without HSC."""
        probe = self.probe
        head = self.model.head.eval()
        features = head.hsc_features(**probe.video_batch(slice(None), self.device))
        if features is None:
            return {}
        v, o = features
        mask = torch.from_numpy(probe.caption_mask).to(self.device)
        accuracy, chance, frames = calibration_accuracy(v.float(), o.float(), mask, self.shots)
        if not frames:  # no held-out video with two shots and text: nothing to measure
            return {"calib_frames": 0}
        return {"calib_acc": accuracy, "calib_chance": chance, "calib_frames": frames}

    def better(self, record: Record) -> bool:
        """Whether `record` beats the best epoch so far (by `train.select`; by the loss where
        there is no held-out R@1)."""
        if self.settings.select == "loss" or "val_r1" not in record:
            return record["val_loss"] < self.best["val_loss"]
        # a small validation split often ties on R@1 (e.g. at 100%): the lower loss wins
        return (record["val_r1"], -record["val_loss"]) > (
            self.best["val_r1"],
            -self.best["val_loss"],
        )

    def checkpoint(self, record: Record) -> bool:
        """Log the epoch, keep the best head (best.pt) and the state to resume from (last.pt);
        whether training stops here (`stopped`)."""
        self.history.append(record)
        with self.run.epochs_log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.better(record):
            self.best, self.stale = record, 0
            save_checkpoint(self.run.best, self.model.head)
        else:
            self.stale += 1
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": record["epoch"],
            "best": json.dumps(self.best),
            "config": self.config_text,
            "features": json.dumps(self.features.source, sort_keys=True),
            "data": self.features.data_key,
            "finished": False,  # until `finish` has run
        }
        save_checkpoint(self.run.last, self.model, state)
        return self.stopped()

    def stopped(self) -> bool:
        """Whether `patience` epochs passed without gain."""
        return self.stale >= self.settings.patience

    def finish(self) -> None:
        """After the last epoch: choose the fusion weights (`choose_fusion`), then mark last.pt
        finished, so a run killed before this point does it when run again."""
        self.choose_fusion()
        update_checkpoint(self.run.last, best=json.dumps(self.best), finished=True)

    @torch.no_grad()
    def choose_fusion(self) -> None:
        """`head.fusion = "validation"`: load the best head, pick the branch weights (a 0.1
        grid over the simplex) with the lowest held-out retrieval loss, save them in best.pt."""
        head = self.model.head
        if self.config.head.fusion != "validation" or self.val is None:
            return
        load_checkpoint(self.run.best, head)
        branches = score_branches(head, self.val, self.settings.score_memory_gb * 1e9)
        stack = np.stack([branches[b] for b in head.branches])
        best = None
        for weights in simplex_grid(len(head.branches), 10):
            sim = np.tensordot(weights, stack, axes=1)
            loss = retrieval_loss(sim, self.val.query_video)
            if best is None or loss < best[0] - 1e-12:
                best = (loss, weights)
        head.fusion_chosen.copy_(torch.as_tensor(best[1], dtype=torch.float32))
        save_checkpoint(self.run.best, head)
        self.best = {**self.best, "fusion": dict(zip(head.branches, best[1].tolist(), strict=True))}


def keep_initial(config: RunConfig, features: Features, run: RunDir, config_text: str) -> Record:
    """`train.epochs = 0` (every zero-shot run): the initial head is the run's checkpoint,
    logged as epoch -1. Needs no captions, so a folder of videos can be searched with it."""
    model = initial_model(config, features)
    record: Record = {"epoch": -1, "seconds": 0.0}
    run.forget_metrics()  # they measured the head this replaces
    save_checkpoint(run.best, model.head)
    state = {
        "epoch": -1,
        "best": json.dumps(record),
        "config": config_text,
        "features": json.dumps(features.source, sort_keys=True),
    }
    save_checkpoint(run.last, model, state)
    atomic_write(run.epochs_log, json.dumps(record) + "\n")
    return run.finished(config, features.source)


def simplex_grid(n: int, steps: int) -> list[np.ndarray]:
    """Every weight vector of n non-negative multiples of 1/steps that sum to 1."""
    if n == 1:
        return [np.ones(1)]
    return [
        np.concatenate([[k / steps], rest * (steps - k) / steps])
        if k < steps
        else np.concatenate([[1.0], np.zeros(n - 1)])
        for k in range(steps + 1)
        for rest in (simplex_grid(n - 1, steps - k) if k < steps else [None])
    ]


def trained_data(config: RunConfig, data_key: str | None) -> str | None:
    """The `Features.data_key` a run of `config` is of: None (any) for an untrained head
    (`train.epochs = 0`, every zero-shot run), which learns nothing from the rows, so one made
    on one split serves another without being made again."""
    return data_key if config.train.epochs else None


def train(
    config: RunConfig,
    features: Features,
    run: RunDir,
    progress: Callable[[Record], None] | None = None,
) -> Record:
    """Train the configured head on `features` (train split); return the best epoch's record.
    A run of another config or on other features in the folder is replaced (`RunDir.create`);
    an unfinished one of this config on these features is resumed."""
    data = trained_data(config, features.data_key)
    finished = run.finished(config, features.source, data)
    if finished is not None:
        return finished  # this config already finished here: nothing to do
    # refused before `create` replaces the run there: settings the head cannot be built with
    # (`head.heads` not dividing the width), or data these settings cannot train on
    initial_model(config, features)  # (seeds itself, as the model trained below does)
    if config.train.epochs:
        trainable(config, features)
    config_text = run.create(config, features.source, data)
    if config.train.epochs == 0:
        return keep_initial(config, features, run, config_text)
    trainer = Trainer(config, features, run, config_text)
    trainer.resume()
    run.forget_metrics()  # they measured the head the next checkpoint replaces
    for epoch in range(trainer.start_epoch, config.train.epochs):
        if trainer.stopped():  # it stopped early, then was killed before `finish`
            break
        started = time.monotonic()
        record = trainer.train_epoch(epoch, started)
        trainer.validate(record)
        record["seconds"] = time.monotonic() - started
        stop = trainer.checkpoint(record)
        if progress:
            progress(record)
        if stop:
            break
    trainer.finish()
    plot_curves(trainer.history, run.curves)
    return trainer.best


def plot_curves(history: list[Record], path: Path) -> None:
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
    if all("val_r1" in h for h in history):  # (none without held-out captions)
        right = left.twinx()
        right.plot(epochs, [h["val_r1"] for h in history], color="tab:red", label="val t2v R@1")
        right.set_ylabel("val t2v R@1 (%)", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
