"""The frames stage's decoding workers and the shared-memory slots that carry their frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline.frame_loader as loading
from cache import WorkDir
from pipeline.datasets import read_textvr
from pipeline.frame_loader import FrameSlots, SampledFrames, SlotFrames, decoded_videos
from pipeline.manifest import build_manifest


def test_a_slot_holds_one_video_until_it_is_given_back(monkeypatch):
    slots = FrameSlots(count=1, size=2 * 4 * 5 * 3)
    video = [np.full((1, 4, 5, 3), 7, np.uint8), np.full((1, 4, 5, 3), 9, np.uint8)]
    held = slots.fill(video)
    assert held == SlotFrames(0, (2, 4, 5, 3))
    assert np.array_equal(slots.frames(held).numpy(), np.concatenate(video))
    monkeypatch.setattr(loading, "SLOT_WAIT_S", 0.2)
    with pytest.raises(RuntimeError, match="no free frame slot in 0 s"):
        slots.fill(video)  # the only slot is still held: waits, then says why
    slots.release(held)
    assert slots.fill([video[1]]) == SlotFrames(0, (1, 4, 5, 3))
    assert slots.fill([np.zeros((3, 4, 5, 3), np.uint8)]) is None  # larger than a slot
    assert slots.fill([np.zeros((1, 4, 5, 3), np.float32)]) is None  # not uint8 frames


def test_slots_are_not_made_where_shared_memory_has_no_room_for_them(monkeypatch):
    need = 3 * 12 * loading.SLOT_FRAME_BYTES + loading.SHARED_MEMORY_NEEDED
    monkeypatch.setattr(loading, "shared_memory_room", lambda: need - 1)
    assert FrameSlots.fitting(12, 3) is None
    monkeypatch.setattr(loading, "shared_memory_room", lambda: need)
    slots = FrameSlots.fitting(12, 3)
    assert slots is not None and tuple(slots.memory.shape) == (3, 12 * loading.SLOT_FRAME_BYTES)


@pytest.mark.parametrize("crossing", ["slots", "tensors", "pickled"])
def test_every_video_reaches_the_stage_intact_however_its_frames_cross(
    synth_set, tmp_path, monkeypatch, crossing
):
    """48 videos through 2 workers and 9 slots (each reused about five times), through fresh
    shared tensors (videos larger than a slot) or pickled (/dev/shm short): every video's
    frames equal those decoded in this process."""
    work = WorkDir(tmp_path / "work", create=True)
    build_manifest(work, read_textvr(synth_set), progress=False)
    videos = work.manifest.videos.read(["path", "duration", "error"])
    expected = [SampledFrames(np.array([r]), videos, 12, "auto")[0][2] for r in range(12)]
    if crossing == "tensors":
        monkeypatch.setattr(loading, "SLOT_FRAME_BYTES", 8)
    if crossing == "pickled":
        monkeypatch.setattr(loading, "shared_memory_room", lambda: 64 * 2**20)
    given_back = []
    release = FrameSlots.release
    monkeypatch.setattr(FrameSlots, "release", lambda s, h: given_back.append(release(s, h)))
    rows = np.tile(np.arange(12), 4)
    seen = []
    for row, times, frames, warning in decoded_videos(rows, videos, 12, "auto", workers=2):
        assert times is not None and warning == ""
        assert isinstance(frames, np.ndarray if crossing == "pickled" else torch.Tensor)
        assert np.array_equal(np.asarray(frames), np.asarray(expected[row])), row
        seen.append(row)
    assert seen == rows.tolist()
    assert len(given_back) == (len(rows) if crossing == "slots" else 0)
