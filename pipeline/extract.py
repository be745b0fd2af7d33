"""`tcd extract`: the three feature stages (ocr -> captions -> encode) in one process.

Each stage still computes only its pending rows, and each model or OCR engine is loaded
inside its stage only when that stage has rows to compute, so a rerun with nothing to do
loads no model and an incremental rebuild pays one start-up instead of three.
"""

from __future__ import annotations

from cache import Shard, WorkDir
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
    retry_failed: bool = False,
    progress: bool = True,
    shard: Shard | None = None,
    ocr_batch: int = 8,
    encode_batch: int = 64,
) -> list[StageReport]:
    """Run ocr, captions and encode over `work` in order; their reports, upstream first."""
    ocr, captions = settings.ocr, settings.captions
    reports = [run_ocr(work, ocr, ocr_batch, decoder, retry_failed, progress, shard)]
    reports.append(run_captions(work, captions, ocr, retry_failed, progress, shard))
    reports += run_encode(
        work, settings.encode, captions, ocr, encode_batch, workers, decoder, retry_failed,
        progress, shard,
    )  # fmt: skip
    return reports
