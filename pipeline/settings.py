"""The pipeline's settings: one dataclass per stage, one TOML file for all of them.

Resolution order, later wins: defaults < the work dir's `settings.toml` (what the stages of
this work dir last ran with) < `--config FILE` < `--set section.key=value`. Every stage
command saves the resolved settings back to `W/settings.toml`, so `tcd ocr --engine kwai`
followed by `tcd caption` captions the Kwai OCR without repeating the engine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache.settings import apply_overrides, dump_toml, from_dict, read_toml, to_dict
from pipeline.captions import CaptionSettings
from pipeline.encode import EncodeSettings
from pipeline.ocr import OcrSettings

WORK_SETTINGS = "settings.toml"


@dataclass(frozen=True)
class PipelineSettings:
    ocr: OcrSettings = field(default_factory=OcrSettings)
    captions: CaptionSettings = field(default_factory=CaptionSettings)
    encode: EncodeSettings = field(default_factory=EncodeSettings)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def resolve_settings(
    work: Path, config: Path | None = None, overrides: Sequence[str] = ()
) -> PipelineSettings:
    """Settings for a stage command on work dir `work` (see the module docstring)."""
    data: dict[str, Any] = {}
    if (work / WORK_SETTINGS).exists():
        data = read_toml(work / WORK_SETTINGS)
    if config is not None:
        data = _merge(data, read_toml(Path(config)))
    return from_dict(PipelineSettings, apply_overrides(data, overrides))


def save_settings(work: Path, settings: PipelineSettings) -> None:
    path = work / WORK_SETTINGS
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # sharded workers save at the same time
    tmp.write_text(
        "# settings the stages of this work dir last ran with\n" + dump_toml(to_dict(settings))
    )
    tmp.replace(path)


def current_keys(settings: PipelineSettings) -> dict[str, str]:
    """Stage name -> the group key these settings use (without creating any group).

    Mirrors the chain of `ocr_group`, `caption_group`, `frame_group`, `ocr_text_group` and
    `query_group`; a test checks that they agree.
    """
    from cache.keys import settings_key
    from pipeline.encode import FrameSettings, TextSettings

    ocr = settings_key(settings.ocr)
    captions = settings_key(settings.captions, upstream=ocr)
    text = TextSettings(settings.encode.text_model)
    return {
        "ocr": ocr,
        "captions": captions,
        "frames": settings_key(
            FrameSettings(settings.encode.vision_model, settings.captions.frames)
        ),
        "ocr_text": settings_key(text, upstream=captions),
        "queries": settings_key(text),
    }
