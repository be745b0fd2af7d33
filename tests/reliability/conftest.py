"""Fixtures of the reliability suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cache import WorkDir
from pipeline.encode import run_encode
from pipeline.settings import CaptionSettings, EncodeSettings, PipelineSettings, save_settings
from tests.test_stages import KWAI, make_work, run_all


@pytest.fixture(scope="session")
def encoded(synth_set, tmp_path_factory) -> tuple[Path, Path]:
    """(a work dir with OCR and captions, the same after an uninterrupted encode)."""
    root = tmp_path_factory.mktemp("faults")
    before = make_work(synth_set, root, "before")
    run_all(before)  # kwai OCR, captions, encode
    save_settings(before.path, PipelineSettings(ocr=KWAI))  # as `tcd ocr --engine kwai` does
    for group in before.stages():  # keep OCR and captions, drop the encodings
        if group.stage in ("frames", "ocr_text", "queries"):
            del before.root[f"stages/{group.stage}"]
    after = Path(shutil.copytree(before.path, root / "after"))
    run_encode(WorkDir(after), EncodeSettings(), CaptionSettings(), KWAI, workers=0, progress=False)
    return before.path, after
