"""A run's configuration: the head and how to train it (one TOML file per run, `configs/*.toml`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from heads.modules import HeadSettings


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 30
    batch_size: int = 42  # the paper's batch
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of all steps
    grad_clip: float = 1.0
    hsc: bool = True
    hsc_weight: float = 0.1  # lambda
    hsc_temperature: float = 0.1
    temperature: float = 0.05  # initial InfoNCE temperature (learned)
    val_fraction: float = 0.1
    patience: int = 5
    seed: int = 0
    score_memory_gb: float = 2.0  # memory budget of validation scoring blocks


@dataclass(frozen=True)
class RunConfig:
    head: HeadSettings = field(default_factory=HeadSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
