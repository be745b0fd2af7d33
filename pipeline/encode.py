"""The encode stage: frozen encoders over sampled frames, window captions and queries.

Three groups, so that a change of one model recomputes only its half:
    stages/frames/<key>    (videos)   frames (T, Dv) f16, times (T,) f32
                                      key: vision model + T
    stages/ocr_text/<key>  (videos)   captions (T, Dt) f16, mask (T,) bool,
                                      instances (I, Dt) f16, instance_mask (I,) bool
                                      key: text model + the captions group's key
    stages/queries/<key>   (captions) query (Dt,) f16
                                      key: text model
Embeddings are L2-normalised; masked entries are zeros. Frames are decoded by DataLoader
workers while the main process runs the model, so the model does not wait on one video; on a
GPU a batch's forward pass runs while the main process gathers the next batch.
The frames group also holds `warning (str)` per row: why its frames are not all real (a
truncated stream; '' when they are).

Report phases: decoding (waiting on the workers) and reading the captions rows are read
time; resizing, tokenising and the forward passes (on a GPU: queuing them, and waiting for
their results) compute; loading a model setup.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from cache import Shard, StageGroup, WorkDir
from cache.device import default_device
from pipeline.captions import fit_to_tokens
from pipeline.frame_loader import decoded_videos
from pipeline.models import PendingEmbeds, TextEncoder, VisionEncoder, load_text, load_vision
from pipeline.settings import (
    CaptionSettings,
    EncodeSettings,
    OcrSettings,
    PipelineSettings,
    StageGroups,
)
from pipeline.stage import StageClock, StageReport, Upstream, guarded, run_stage
from pipeline.video import Decoder, require_decoder


def run_encode(
    work: WorkDir,
    settings: EncodeSettings,
    captions: CaptionSettings,
    ocr: OcrSettings,
    batch_size: int | None = None,
    workers: int = 2,
    decoder: str = Decoder.auto,
    retry_failed: bool = False,
    progress: bool = True,
    shard: Shard | None = None,
) -> list[StageReport]:
    """Encode frames, window captions + OCR instances, and queries (each only where pending).

    `batch_size`: images (T per video) or queries per forward pass (`default_batch_size()`
    when None). Refused up front (`UpstreamError`, nothing computed or recorded) while
    videos whose captions it would encode have no window captions for these settings."""
    require_decoder(decoder)
    batch_size = batch_size or default_batch_size()
    groups = StageGroups.resolve(work, PipelineSettings(ocr, captions, settings))
    captions_rows = Upstream(groups, "ocr_text")
    captions_rows.require(retry_failed, shard)
    text: dict[str, TextEncoder] = {}

    def text_model() -> TextEncoder:
        if "model" not in text:
            text["model"] = load_text(settings.text_model)
        return text["model"]

    return [
        run_encode_frames(
            work, settings, captions, ocr, batch_size, workers, decoder, retry_failed, progress,
            shard,
        ),
        _encode_ocr_text(
            work, groups.ocr_text, captions_rows, captions, text_model, retry_failed, progress,
            shard,
        ),
        _encode_queries(
            work, groups.queries, text_model, batch_size, retry_failed, progress, shard
        ),
    ]  # fmt: skip


# -- frames ---------------------------------------------------------------------------------
def default_batch_size() -> int:
    """Images or queries per forward pass: 512 on a GPU (bench.extraction measured the frames
    stage 2.1x faster than with 64 on an H200), 64 on the CPU."""
    return 512 if default_device().type == "cuda" else 64


def run_encode_frames(
    work: WorkDir,
    settings: EncodeSettings,
    captions: CaptionSettings,
    ocr: OcrSettings,
    batch_size: int | None = None,
    workers: int = 2,
    decoder: str = Decoder.auto,
    retry_failed: bool = False,
    progress: bool = True,
    shard: Shard | None = None,
) -> StageReport:
    """Encode the sampled frames only (where pending): the frames group does not depend on
    OCR, so it needs no captions (bench.extraction's `--frames-only` times it alone)."""
    require_decoder(decoder)
    batch_size = batch_size or default_batch_size()
    groups = StageGroups.resolve(work, PipelineSettings(ocr, captions, settings))
    return _encode_frames(
        work, groups.frames, settings, captions, batch_size, workers, decoder, retry_failed,
        progress, shard,
    )  # fmt: skip


def batches_left_running(encoder: VisionEncoder) -> int:
    """Batches the frames stage leaves computing while it gathers the next: one on a GPU (its
    forward pass runs while this process takes, copies and resizes the next batch's videos),
    none on the CPU (a batch is computed when started; its rows are then written at once)."""
    return 1 if encoder.device.type == "cuda" else 0


# cache writer processes of the frames group on a GPU (`run_stage`): with 2, an H200's stage
# waited 7.0 s of 3,000 videos on them; with 4, 0.6 s (bench.extraction, 16 cores)
WRITE_PROCESSES = 4


def _encode_frames(
    work: WorkDir,
    group: StageGroup,
    settings: EncodeSettings,
    captions: CaptionSettings,
    batch_size: int,
    workers: int,
    decoder: str,
    retry_failed: bool,
    progress: bool,
    shard: Shard | None,
) -> StageReport:
    model: dict[str, VisionEncoder] = {}
    n = captions.frames

    def arrays() -> dict[str, Any]:
        model["m"] = load_vision(settings.vision_model)
        return {
            "frames": ((n, model["m"].dim), "float16", 0),
            "times": ((n,), "float32", 0),
            "warning": ((), str, ""),
        }

    def produce(rows: np.ndarray, clock: StageClock) -> Iterator[tuple[int, Any]]:
        # Every forward pass has the same shape, `per_batch` videos of T frames, padded with
        # blank images when fewer are pending. With a fixed shape a frame's embedding does not
        # depend (not even in its last bit) on which other videos share its batch, so a
        # resumed run writes the same bits as an uninterrupted one.
        per_batch = max(1, batch_size // n)
        videos = work.manifest.videos.read(["path", "duration", "error"])  # (under its lock)
        pending: list[tuple[int, dict[str, Any], torch.Tensor]] = []
        started: list[tuple[list[tuple[int, dict[str, Any]]], PendingEmbeds]] = []
        running = batches_left_running(model["m"])

        def resized(frames: Any) -> dict[str, Any]:
            return {"pixels": model["m"].preprocess(frames)}

        def start_batch() -> None:
            with clock.computing():
                pixels = torch.cat([p for _, _, p in pending])  # videos differ in size: resized
                blank = pixels.new_zeros((per_batch * n - len(pixels), *pixels.shape[1:]))
                embeds = model["m"].start_embed(torch.cat([pixels, blank]))
            started.append(([(row, data) for row, data, _ in pending], embeds))
            pending.clear()

        def finish_batch() -> Iterator[tuple[int, Any]]:
            members, embeds = started.pop(0)
            with clock.computing():
                frames = embeds.result().astype(np.float16)
            for k, (row, data) in enumerate(members):
                yield row, {**data, "frames": frames[k * n : (k + 1) * n]}

        for row, times, frames, warning in decoded_videos(rows, videos, n, decoder, workers):
            if times is None:
                yield row, frames  # the worker's Failure
                continue
            with clock.computing():  # one video that cannot be resized fails alone
                _, prepared = guarded(row, functools.partial(resized, frames))
            if not isinstance(prepared, dict):
                yield row, prepared
                continue
            data = {"times": times.astype(np.float32), "warning": warning}
            pending.append((row, data, prepared["pixels"]))
            if len(pending) == per_batch:
                start_batch()
                while len(started) > running:
                    yield from finish_batch()
        if pending:
            start_batch()
        while started:
            yield from finish_batch()

    # On a GPU rows come faster than this process could also write them (milliseconds each);
    # workers=0 (a Ray actor) asks the stage to fork no process: it writes on a thread.
    writers = WRITE_PROCESSES if workers and default_device().type == "cuda" else 0
    return run_stage(
        work, group, arrays, produce, retry_failed, progress, shard, write_processes=writers
    )


# -- window captions and OCR instances ------------------------------------------------------
def _encode_ocr_text(
    work: WorkDir,
    group: StageGroup,
    upstream: Upstream,
    captions: CaptionSettings,
    text_model: Any,
    retry_failed: bool,
    progress: bool,
    shard: Shard | None,
) -> StageReport:
    n, m = captions.frames, captions.max_instances
    captions_group = upstream.group

    def arrays() -> dict[str, Any]:
        d = text_model().dim
        return {
            "captions": ((n, d), "float16", 0),
            "mask": ((n,), "bool", False),
            "instances": ((m, d), "float16", 0),
            "instance_mask": ((m,), "bool", False),
        }

    def encode_row(row: int, clock: StageClock) -> dict[str, Any]:
        upstream.check(row)
        model = text_model()
        texts = [str(t) for t in captions_group.group["captions"][row]]
        mask = np.asarray(captions_group.group["mask"][row], bool)
        words = json.loads(str(captions_group.group["instances"][row]) or "[]")[:m]
        with clock.computing():
            texts = [fit_to_tokens(t, model.token_ends, model.text_tokens) for t in texts]
            unique = sorted({t for t, keep in zip(texts, mask, strict=True) if keep} | set(words))
            table = dict(zip(unique, model(unique), strict=True)) if unique else {}
        caption_emb = np.zeros((n, model.dim), np.float16)
        instance_emb = np.zeros((m, model.dim), np.float16)
        for i, (t, keep) in enumerate(zip(texts, mask, strict=True)):
            if keep:
                caption_emb[i] = table[t]
        for i, w in enumerate(words):
            instance_emb[i] = table[w]
        instance_mask = np.zeros(m, bool)
        instance_mask[: len(words)] = True
        return {
            "captions": caption_emb,
            "mask": mask,
            "instances": instance_emb,
            "instance_mask": instance_mask,
        }

    def produce(rows: np.ndarray, clock: StageClock) -> Iterator[tuple[int, Any]]:
        for row in rows:
            if upstream.has(row):  # else: missing since the check (a concurrent run)
                yield guarded(int(row), lambda row=int(row): encode_row(row, clock))

    return run_stage(work, group, arrays, produce, retry_failed, progress, shard, upstream=upstream)


# -- queries --------------------------------------------------------------------------------
def _encode_queries(
    work: WorkDir,
    group: StageGroup,
    text_model: Any,
    batch_size: int,
    retry_failed: bool,
    progress: bool,
    shard: Shard | None,
) -> StageReport:
    captions = work.manifest.captions.read(["text", "present"])
    texts, present = captions["text"], captions["present"]

    def arrays() -> dict[str, Any]:
        return {"query": ((text_model().dim,), "float16", 0)}

    def produce(rows: np.ndarray, clock: StageClock) -> Iterator[tuple[int, Any]]:
        # Fixed blocks of rows [b * batch_size, (b + 1) * batch_size), encoded whole even when
        # some of their rows are done: a query's embedding then never depends (in its last
        # bit) on which other rows happened to be pending, so a resumed run equals a clean one.
        model = text_model()
        wanted = set(rows.tolist())
        for block in np.unique(rows // batch_size):
            members = [
                r
                for r in range(block * batch_size, min((block + 1) * batch_size, len(texts)))
                if present[r]
            ]
            with clock.computing():
                batch = [
                    fit_to_tokens(str(texts[r]).strip(), model.token_ends, model.text_tokens)
                    for r in members
                ]
                embeds = model(batch).astype(np.float16)
            for row, embed in zip(members, embeds, strict=True):
                if row in wanted:
                    yield row, {"query": embed}

    return run_stage(work, group, arrays, produce, retry_failed, progress, shard)
