"""`tcd extract`: the three feature stages (ocr -> captions -> encode) in one process.

Each stage still computes only its pending rows, and each model or OCR engine is loaded
inside its stage only when that stage has rows to compute, so a rerun with nothing to do
loads no model and an incremental rebuild pays one start-up instead of three.
"""

from __future__ import annotations

from typing import Any

from cache import WorkDir
from pipeline.captions import run_captions
from pipeline.encode import run_encode
from pipeline.ocr import run_ocr
from pipeline.settings import PipelineSettings
from pipeline.stage import StageReport
from pipeline.video import Decoder


def run_extract(
    work: WorkDir,
    settings: PipelineSettings,
    workers: int = 2,
    decoder: str = Decoder.auto,
    ocr_threads: int = 1,
    **common: Any,
) -> list[StageReport]:
    """Run ocr, captions and encode over `work` in order; their reports, upstream first.
    `common` (retry_failed, progress, shard) goes to every stage; batch sizes are the stages';
    `ocr_threads` is onnxruntime's thread count (`run_ocr`'s `threads`)."""
    ocr, captions = settings.ocr, settings.captions
    common_ocr = {"decoder": decoder, "captions": captions, "threads": ocr_threads}
    reports = [run_ocr(work, ocr, **common_ocr, **common)]
    reports.append(run_captions(work, captions, ocr, **common))
    encode = settings.encode
    reports += run_encode(work, encode, captions, ocr, workers=workers, decoder=decoder, **common)
    return reports
