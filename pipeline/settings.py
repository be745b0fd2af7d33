"""The pipeline's settings and the one chain "settings -> stage groups".

One dataclass per stage, one TOML file for all of them. Resolution order, later wins:
defaults < the work dir's `settings.toml` (what the stages of this work dir last ran with)
< `--config FILE` < `--set section.key=value`. Every stage command saves the resolved
settings back to `W/settings.toml`, so `tcd ocr --engine kwai` followed by `tcd caption`
captions the Kwai OCR without repeating the engine.

`StageGroups` is the only place that knows which settings key which stage group and which
group feeds which: stages, the trainer's feature loading and `tcd cache status` all ask it.
This module imports neither torch nor transformers, so light commands stay light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cache import SettingsError, StageGroup, WorkDir, settings_key
from cache.atomic import atomic_write
from cache.settings import dump_toml, load_settings, to_dict

WORK_SETTINGS = "settings.toml"
OCR_ENGINES = ("rapidocr", "paddleocr", "kwai")


def _check(where: str, ok: bool, rule: str, value: Any) -> None:
    if not ok:
        raise SettingsError(f"{where} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class OcrSettings:
    engine: Literal["rapidocr", "paddleocr", "kwai"] = "rapidocr"
    fps: float = 2.0  # frames read per second of video
    max_frames: int = 64  # cap per video (long videos are sampled uniformly)
    det_limit_side: int = 256  # rapidocr: upscale the short side to at least this
    paddle_det_dir: str = ""  # paddleocr: local model dirs (the hub is unreachable offline)
    paddle_rec_dir: str = ""

    def __post_init__(self) -> None:
        _check("ocr.fps", math.isfinite(self.fps) and self.fps > 0, "> 0", self.fps)
        _check("ocr.max_frames", self.max_frames >= 1, ">= 1", self.max_frames)
        _check("ocr.det_limit_side", self.det_limit_side >= 1, ">= 1", self.det_limit_side)


@dataclass(frozen=True)
class CaptionSettings:
    frames: int = 12  # T: captions (and encoded frames) per video
    xi: float = 1.0  # window length in units of duration / T
    min_score: float = 0.5
    separator: str = ", "
    max_instances: int = 200

    def __post_init__(self) -> None:
        _check("captions.frames", 1 <= self.frames <= 1024, "in 1..1024", self.frames)
        _check("captions.xi", math.isfinite(self.xi) and self.xi > 0, "> 0", self.xi)
        _check("captions.min_score", 0 <= self.min_score <= 1, "in [0, 1]", self.min_score)
        _check("captions.max_instances", self.max_instances >= 0, ">= 0", self.max_instances)


@dataclass(frozen=True)
class EncodeSettings:
    vision_model: str = "clip-tiny-random"  # real runs: openai/clip-vit-base-patch32
    text_model: str = "minilm"

    def __post_init__(self) -> None:
        _check("encode.vision_model", bool(self.vision_model.strip()), "a name", self.vision_model)
        _check("encode.text_model", bool(self.text_model.strip()), "a name", self.text_model)


@dataclass(frozen=True)
class FrameSettings:
    """What keys the frames group: the vision model and T."""

    model: str
    frames: int


@dataclass(frozen=True)
class TextSettings:
    """What keys the ocr_text and queries groups: the text model."""

    model: str


@dataclass(frozen=True)
class PipelineSettings:
    ocr: OcrSettings = field(default_factory=OcrSettings)
    captions: CaptionSettings = field(default_factory=CaptionSettings)
    encode: EncodeSettings = field(default_factory=EncodeSettings)


def resolve_settings(
    work: Path, config: Path | None = None, overrides: Sequence[str] = ()
) -> PipelineSettings:
    """Settings for a stage command on work dir `work` (see the module docstring)."""
    saved = work / WORK_SETTINGS
    return load_settings(PipelineSettings, [saved if saved.exists() else None, config], overrides)


def save_settings(work: Path, settings: PipelineSettings) -> None:
    header = "# settings the stages of this work dir last ran with\n"
    atomic_write(work / WORK_SETTINGS, header + dump_toml(to_dict(settings)))


# -- the chain settings -> stage groups -----------------------------------------------------
STAGES = ("ocr", "captions", "frames", "ocr_text", "queries")


def _chain(settings: PipelineSettings) -> list[tuple[str, Any, str | None, str]]:
    """(stage, the settings that key it, the stage it reads, row kind), upstream first."""
    text = TextSettings(settings.encode.text_model)
    return [
        ("ocr", settings.ocr, None, "videos"),
        ("captions", settings.captions, "ocr", "videos"),
        (
            "frames",
            FrameSettings(settings.encode.vision_model, settings.captions.frames),
            None,
            "videos",
        ),
        ("ocr_text", text, "captions", "videos"),
        ("queries", text, None, "captions"),
    ]


@dataclass(frozen=True)
class StageGroups:
    """The cache groups of one work dir under one set of settings."""

    ocr: StageGroup
    captions: StageGroup
    frames: StageGroup
    ocr_text: StageGroup
    queries: StageGroup

    @classmethod
    def resolve(cls, work: WorkDir, settings: PipelineSettings) -> StageGroups:
        """Open (creating when missing) every stage group these settings use."""
        groups: dict[str, StageGroup] = {}
        for stage, keyed_by, upstream, rows in _chain(settings):
            up = groups[upstream].key if upstream else None
            groups[stage] = work.stage(stage, keyed_by, upstream=up, rows=rows)
        return cls(**groups)

    @staticmethod
    def keys(settings: PipelineSettings) -> dict[str, str]:
        """Stage -> group key, without opening or creating anything (for `cache status`)."""
        keys: dict[str, str] = {}
        for stage, keyed_by, upstream, _ in _chain(settings):
            keys[stage] = settings_key(keyed_by, upstream=keys[upstream] if upstream else None)
        return keys
