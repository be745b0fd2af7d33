"""What only a GPU can show: skipped, with the reason, where torch sees none (CI, this
project's machines); run on a lent GPU machine with `python -m pytest tests/test_gpu.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cache import Shard, WorkDir
from pipeline.datasets import read_textvr
from pipeline.encode import run_encode_frames
from pipeline.manifest import build_manifest
from pipeline.models import load_vision
from pipeline.settings import (
    CaptionSettings,
    EncodeSettings,
    OcrSettings,
    PipelineSettings,
    StageGroups,
)
from pipeline.synth import generate
from tests.conftest import FAST_SYNTH
from tests.test_stages import embeddings_in_stage_batches

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_frame_bits_do_not_depend_on_batch_mates(tmp_path):
    """bf16 passes on the GPU, rows written by writer processes: one run and two shard runs
    (other batch-mates, other padding) write the same bits for every video."""
    generate(tmp_path / "synth", 40, seed=5, settings=FAST_SYNTH, progress=False)
    settings = EncodeSettings(vision_model="clip-vit-b32-random")
    frames = {}
    for name, shards in (("one run", [None]), ("two shards", [Shard(0, 2), Shard(1, 2)])):
        work = WorkDir(tmp_path / name, create=True)
        build_manifest(work, read_textvr(tmp_path / "synth"), progress=False)
        for shard in shards:  # 120 frames a pass: 10 videos, several passes per run
            run_encode_frames(
                work, settings, CaptionSettings(), OcrSettings(), batch_size=120, workers=2,
                progress=False, shard=shard,
            )  # fmt: skip
        pipeline = PipelineSettings(OcrSettings(), CaptionSettings(), settings)
        group = StageGroups.resolve(work, pipeline).frames
        assert group.counts()["done"] == 40
        frames[name] = np.asarray(group.group["frames"][:])
    assert np.isfinite(frames["one run"]).all() and np.abs(frames["one run"]).sum() > 0
    assert np.array_equal(frames["one run"], frames["two shards"])


def test_gpu_rows_equal_the_model_on_each_video_alone(tmp_path):
    """Frames copied on their own stream while earlier batches compute, results collected one
    batch late, rows written by writer processes: each row holds the bits of the model on
    its own video's frames, computed alone (no overlap, nothing else queued); 45 videos,
    10 a batch: the last batch is partial."""
    generate(tmp_path / "synth", 45, seed=6, settings=FAST_SYNTH, progress=False)
    settings, captions = EncodeSettings(vision_model="clip-vit-b32-random"), CaptionSettings()
    work = WorkDir(tmp_path / "work", create=True)
    build_manifest(work, read_textvr(tmp_path / "synth"), progress=False)
    run_encode_frames(
        work, settings, captions, OcrSettings(), batch_size=120, workers=2, progress=False
    )
    group = StageGroups.resolve(work, PipelineSettings(OcrSettings(), captions, settings)).frames
    expected = embeddings_in_stage_batches(
        work, load_vision(settings.vision_model), captions.frames, 120
    )
    assert np.array_equal(np.asarray(group.group["frames"][:]), expected)
