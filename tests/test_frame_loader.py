"""The frames stage's decoding workers and the shared-memory slots that carry their frames."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import pipeline.frame_loader as loading
from cache import WorkDir
from pipeline.datasets import read_textvr
from pipeline.frame_loader import (
    FrameSlots,
    SampledFrames,
    SlotFrames,
    SlotsExhausted,
    decoded_videos,
)
from pipeline.manifest import build_manifest


def test_a_slot_holds_one_video_until_it_is_given_back(monkeypatch):
    slots = FrameSlots(count=1, size=2 * 4 * 5 * 3)
    video = [np.full((1, 4, 5, 3), 7, np.uint8), np.full((1, 4, 5, 3), 9, np.uint8)]
    held = slots.fill(video)
    assert held == SlotFrames(0, (2, 4, 5, 3))
    assert np.array_equal(slots.frames(held).numpy(), np.concatenate(video))
    monkeypatch.setattr(loading, "SLOT_WAIT_S", 0.2)
    with pytest.raises(SlotsExhausted, match="no free frame slot in 0.2 s"):
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


def manifest_videos(synth_set, tmp_path) -> dict[str, np.ndarray]:
    work = WorkDir(tmp_path / "work", create=True)
    build_manifest(work, read_textvr(synth_set), progress=False)
    return work.manifest.videos.read(["path", "duration", "error"])


@pytest.mark.parametrize("crossing", ["slots", "tensors", "pickled"])
def test_every_video_reaches_the_stage_intact_however_its_frames_cross(
    synth_set, tmp_path, monkeypatch, crossing
):
    """48 videos through 2 workers and 9 slots (each reused about five times), through fresh
    shared tensors (videos larger than a slot) or pickled (/dev/shm short): every video's
    frames equal those decoded in this process."""
    videos = manifest_videos(synth_set, tmp_path)
    expected = [SampledFrames(np.array([r]), videos, 12, "auto")[0][2] for r in range(12)]
    frame_bytes = max(np.asarray(f)[0].nbytes for f in expected)
    # small slots and margin: the needs stay within a container's 64 MB /dev/shm
    monkeypatch.setattr(loading, "SHARED_MEMORY_NEEDED", 16 * 2**20)
    monkeypatch.setattr(loading, "SLOT_FRAME_BYTES", frame_bytes if crossing == "slots" else 8)
    if crossing == "pickled":
        monkeypatch.setattr(loading, "shared_memory_room", lambda: 0)
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


def one_colour_per_row(path, times, n, decoder, warn=None):
    """Decoding stand-in: every frame of a video is its row number (read from its path)."""
    row = int(str(path).rsplit("-", 1)[1])
    yield times, np.full((len(times), 8, 8, 3), row, np.uint8)


def test_a_slot_is_not_refilled_while_its_frames_are_held(monkeypatch):
    """The workers, idle with room to decode ahead, never write into the slot of the video
    the stage's process holds, until it takes the next one. With one slot fewer than the
    stage makes, none is spare: a slot given back before its video is read would be the
    next one filled."""
    monkeypatch.setattr(loading, "read_frames", one_colour_per_row)  # the workers fork after
    monkeypatch.setattr(loading, "SLOT_FRAME_BYTES", 8 * 8 * 3)
    monkeypatch.setattr(loading, "SHARED_MEMORY_NEEDED", 2**20)
    fitting = FrameSlots.fitting
    monkeypatch.setattr(FrameSlots, "fitting", lambda n, count: fitting(n, count - 1))
    n = 40
    videos = {
        "path": np.array([f"video-{r}" for r in range(n)], dtype=object),
        "duration": np.full(n, 4.0),
        "error": np.full(n, "", dtype=object),
    }
    for k, (row, _, frames, _) in enumerate(decoded_videos(np.arange(n), videos, 12, "auto", 2)):
        assert isinstance(frames, torch.Tensor) and int(frames.max()) == row == k
        if k % 4 == 0:
            time.sleep(0.3)  # the workers fill every free slot meanwhile
        assert int(frames.min()) == int(frames.max()) == row  # still this video's frames


def test_a_worker_without_a_free_slot_stops_the_stage_and_says_why(
    synth_set, tmp_path, monkeypatch
):
    videos = manifest_videos(synth_set, tmp_path)
    monkeypatch.setattr(loading, "SLOT_WAIT_S", 0.5)
    one_slot = FrameSlots(1, 12 * 384 * 216 * 3)
    monkeypatch.setattr(FrameSlots, "fitting", classmethod(lambda cls, n, count: one_slot))
    # one worker: with two, the second worker's video could take the only slot first, and
    # the first video (which the loader must yield first) would then be the one to time out
    items = decoded_videos(np.tile(np.arange(12), 3), videos, 12, "auto", workers=1)
    next(items)  # holds the only slot while the worker has more videos to decode
    time.sleep(1.5)
    with pytest.raises(SlotsExhausted, match="no free frame slot in 0.5 s"):
        next(items)
