"""Heavier checks, skipped by `make test` and CI; run with `make test-slow`."""

from __future__ import annotations

import json

import pytest

from pipeline.captions import CaptionSettings, run_captions
from pipeline.ocr import OcrSettings, run_ocr
from tests.test_stages import make_work


@pytest.mark.slow
def test_rapidocr_pipeline_puts_the_key_text_in_the_captions(synth_set, tmp_path):
    """Real OCR at the default 2 frames/s over every synthetic video: the window captions of
    (almost) every video contain its key text."""
    work = make_work(synth_set, tmp_path)
    assert run_ocr(work, OcrSettings(), progress=False).failed == 0
    assert run_captions(work, CaptionSettings(), OcrSettings(), progress=False).failed == 0
    group = next(g for g in work.stages() if g.stage == "captions")
    rows = work.manifest.videos.row_of()
    meta = json.loads((synth_set / "synth_meta.json").read_text())
    found = [
        any(video["key_text"] in str(c) for c in group.group["captions"][rows[video["path"]]])
        for video in meta["videos"]
    ]
    assert sum(found) >= 0.9 * len(found), found
