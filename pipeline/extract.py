"""`tcd extract`: the three feature stages (ocr -> captions -> encode) in one process.

Each stage still computes only its pending rows, and each model or OCR engine is loaded
inside its stage only when that stage has rows to compute, so a rerun with nothing to do
loads no model and an incremental rebuild pays one start-up instead of three.
"""

from __future__ import annotations

from typing import Any

from cache import WorkDir
from pipeline.settings import COMMAND_GROUPS, PipelineSettings, StageGroups
from pipeline.stage import StageReport, idle_report
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
    `ocr_threads` is onnxruntime's thread count (`run_ocr`'s `threads`). A stage with nothing
    to do is not even imported (encode's module imports torch)."""
    groups = StageGroups.resolve(work, settings)
    retry, shard = common.get("retry_failed", False), common.get("shard")

    def idle(command: str) -> list[StageReport] | None:
        names = COMMAND_GROUPS[command]
        if any(groups.todo(name, retry, shard) for name in names):
            return None
        return [idle_report(groups, name, shard) for name in names]

    ocr, captions = settings.ocr, settings.captions
    reports = idle("ocr")
    if reports is None:
        from pipeline.ocr import run_ocr

        common_ocr = {"decoder": decoder, "captions": captions, "threads": ocr_threads}
        reports = [run_ocr(work, ocr, **common_ocr, **common)]
    captioned = idle("caption")
    if captioned is None:
        from pipeline.captions import run_captions

        captioned = [run_captions(work, captions, ocr, **common)]
    encoded = idle("encode")
    if encoded is None:
        from pipeline.encode import run_encode

        encode = settings.encode
        encoded = run_encode(
            work, encode, captions, ocr, workers=workers, decoder=decoder, **common
        )
    return reports + captioned + encoded
