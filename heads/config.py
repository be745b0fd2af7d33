"""A run's configuration: the head and how to train it (one TOML file per run, `configs/*.toml`).

Values are checked where they are parsed (`__post_init__`, so `--set` overrides and configs
written in code alike): an unknown head kind or an out-of-range value is a `SettingsError`
naming the setting, never a crash later in training. No torch import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from cache.keys import added_setting
from cache.settings import check_setting

HeadKind = Literal["tcd", "video-only", "ocr-instances", "zero-shot"]
Fusion = Literal["mean", "learned", "validation"]
Selection = Literal["loss", "r1"]
HscForm = Literal["cycle", "cycle+index"]
Branch = Literal["tv", "to", "th"]
CoattnInto = Literal["both", "captions", "frames"]
ConditionLength = Literal["T", "captions"]
HEAD_KINDS: tuple[str, ...] = get_args(HeadKind)
BRANCHES: tuple[str, ...] = get_args(Branch)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@dataclass(frozen=True)
class HeadSettings:
    kind: HeadKind = "tcd"
    width: int = 0  # common width; 0 = the text encoder's width
    heads: int = 4  # attention heads
    text_condition: Literal["none", "softmax-reweight"] = "softmax-reweight"
    tau: float = 5.0
    # what a video's caption weights sum to: its number of captions with text (uniform
    # weights then leave the head as without text-condition: configs/tcd.toml), or T (the
    # behaviour before the setting, kept for runs saved then)
    condition_length: ConditionLength = added_setting("T")
    coattn: bool = True
    # which features co-attention updates: both (the paper; the default here so runs saved
    # before this setting load as trained), only the captions (they read the frames, frames
    # keep the encoder's features: configs/tcd.toml, chosen on validation) or only the frames.
    # Settings added after runs exist are `added_setting`s whose default is the behaviour
    # before them (heads.run_dir.same_config). Both coattn_* do nothing when coattn is off.
    coattn_into: CoattnInto = added_setting("both")
    ctcd: bool = True
    branches: tuple[Branch, ...] = BRANCHES
    dropout: float = 0.1
    # time (README "A head that knows when"); each can be switched off for the ablation
    time_embedding: bool = True  # co-attention routes by a time code shared by frame i, caption i
    time_bias: bool = True  # co-attention prefers nearby times (learned distance penalty)
    cotimed_pooling: bool = True  # frame weights also follow the co-timed captions' relevance
    coattn_window: int = added_setting(-1)  # co-attention reads times within k segments (-1: all)
    # how branch scores combine: the paper's mean, learned weights, or weights chosen on the
    # validation split after training
    fusion: Fusion = "mean"

    def __post_init__(self) -> None:
        check_setting("head.kind", self.kind in HEAD_KINDS, f"one of {HEAD_KINDS}", self.kind)
        check_setting("head.width", self.width >= 0, ">= 0 (0 = the text width)", self.width)
        check_setting("head.heads", self.heads >= 1, ">= 1", self.heads)
        check_setting(
            "head.width",
            self.kind != "zero-shot" or self.width == 0,
            "0 for head.kind = 'zero-shot' (its projections are the identity)",
            self.width,
        )
        check_setting(
            "head.width",
            self.width == 0 or self.width % self.heads == 0,
            f"a multiple of head.heads = {self.heads}",
            self.width,
        )
        check_setting(
            "head.text_condition",
            self.text_condition in ("none", "softmax-reweight"),
            "'none' or 'softmax-reweight'",
            self.text_condition,
        )
        check_setting("head.tau", math.isfinite(self.tau) and self.tau >= 0, ">= 0", self.tau)
        check_setting(
            "head.condition_length",
            self.condition_length in get_args(ConditionLength),
            f"one of {get_args(ConditionLength)}",
            self.condition_length,
        )
        check_setting("head.dropout", 0 <= self.dropout < 1, "in [0, 1)", self.dropout)
        check_setting(
            "head.coattn_into",
            self.coattn_into in get_args(CoattnInto),
            f"one of {get_args(CoattnInto)}",
            self.coattn_into,
        )
        check_setting(
            "head.coattn_window",
            self.coattn_window >= -1,
            ">= 0, or -1 for all times",
            self.coattn_window,
        )
        check_setting(
            "head.fusion",
            self.fusion in get_args(Fusion),
            f"one of {get_args(Fusion)}",
            self.fusion,
        )
        usable = [b for b in self.branches if b != "th" or self.ctcd]
        check_setting(
            "head.branches",
            set(self.branches) <= set(BRANCHES)
            and len(set(self.branches)) == len(self.branches)
            and bool(usable),
            f"distinct names out of {BRANCHES}, at least one usable (th needs head.ctcd)",
            list(self.branches),
        )


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 30  # 0: keep the initial head (the untrained row of a study)
    batch_size: int = 42  # the paper's batch
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of all steps
    grad_clip: float = 1.0
    hsc: bool = True
    hsc_weight: float = 0.1  # lambda
    hsc_temperature: float = 0.1  # s in HSC's softmaxes (README: chosen by a validation sweep)
    hsc_form: HscForm = "cycle"  # cycle+index also ties frame i's soft-nearest caption to i
    temperature: float = 0.05  # initial InfoNCE temperature (learned)
    val_fraction: float = 0.1
    patience: int = 5
    select: Selection = "loss"  # best epoch by validation loss (does not saturate), or by R@1
    seed: int = 0
    score_memory_gb: float = 2.0  # memory budget of validation scoring blocks

    def __post_init__(self) -> None:
        check_setting("train.epochs", self.epochs >= 0, ">= 0 (0 = untrained)", self.epochs)
        check_setting("train.batch_size", self.batch_size >= 2, ">= 2 (InfoNCE)", self.batch_size)
        check_setting("train.lr", _positive(self.lr), "> 0", self.lr)
        check_setting(
            "train.weight_decay", 0 <= self.weight_decay < math.inf, ">= 0", self.weight_decay
        )
        check_setting("train.warmup", 0 <= self.warmup <= 1, "in [0, 1]", self.warmup)
        check_setting("train.grad_clip", _positive(self.grad_clip), "> 0", self.grad_clip)
        check_setting("train.hsc_weight", 0 <= self.hsc_weight < math.inf, ">= 0", self.hsc_weight)
        for name in ("hsc_temperature", "temperature", "score_memory_gb"):
            check_setting(
                f"train.{name}", _positive(getattr(self, name)), "> 0", getattr(self, name)
            )
        check_setting(
            "train.val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)", self.val_fraction
        )
        check_setting("train.patience", self.patience >= 1, ">= 1", self.patience)
        check_setting(
            "train.hsc_form",
            self.hsc_form in get_args(HscForm),
            f"one of {get_args(HscForm)}",
            self.hsc_form,
        )
        check_setting(
            "train.select", self.select in get_args(Selection), "'loss' or 'r1'", self.select
        )
        check_setting("train.seed", self.seed >= 0, ">= 0", self.seed)


@dataclass(frozen=True)
class RunConfig:
    head: HeadSettings = field(default_factory=HeadSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        check_setting(
            "train.epochs",
            self.head.kind != "zero-shot" or self.train.epochs == 0,
            "0 for head.kind = 'zero-shot' (it has nothing to train)",
            self.train.epochs,
        )
        check_setting(
            "train.epochs",
            self.head.fusion != "validation" or self.train.epochs > 0,
            "> 0 for head.fusion = 'validation' (0 epochs keep the initial head and its mean)",
            self.train.epochs,
        )
        check_setting(
            "train.val_fraction",
            self.head.fusion != "validation" or self.train.val_fraction > 0,
            "> 0 for head.fusion = 'validation' (it chooses the weights on held-out videos)",
            self.train.val_fraction,
        )
