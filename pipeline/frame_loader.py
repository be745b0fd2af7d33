"""The frames stage's decoding: each video's T sampled frames, decoded by DataLoader worker
processes while the stage's process runs the model, and how the frames reach that process.

Frames cross in shared memory (/dev/shm). A fresh shared tensor per video costs the receiving
process a new mapping, the page faults of its first read and an unmapping (with torch's
default `file_descriptor` sharing also a socket round trip with the worker): about 2 ms per
video on this project's 2-core machine, against about 0.6 ms in slots (`bench.extraction`'s
`handoff`). That is the order of the stage process's whole per-video cost on a GPU, which is
what bounds the stage there. So the workers write into `FrameSlots`: buffers made once,
before the workers start, and reused video after video; a video then costs the receiving
process a slot number through a pipe. A worker takes a free slot from a queue and the stage's
process gives it back when it has read the frames (as the next video is taken), so a slot is
never written while it is read. There is one more slot than videos in flight (`PREFETCH` per
worker), so a worker never waits for one.

The slots are reserved in /dev/shm when decoding starts: T 720p frames each, 2.8 MB a frame,
so 49 slots (12 workers) and T = 12 take 1.6 GB. Where /dev/shm has no room for them and
`SHARED_MEMORY_NEEDED` more, or a video is larger than a slot (more than 720p), frames cross
as a fresh shared tensor per video, and where /dev/shm is short (a container's 64 MB) they are
pickled.
"""

from __future__ import annotations

import math
import queue
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cache import UNREADABLE_VIDEO
from pipeline.errors import VideoError
from pipeline.stage import Failure
from pipeline.video import read_frames, segment_centres

PREFETCH = 4  # videos decoded ahead by each worker (the DataLoader's prefetch_factor)
ROWS_PER_WORKER = 16  # fewer videos than this per decoding worker: decode in this process
SLOT_FRAME_BYTES = 1280 * 720 * 3  # a slot holds T frames of up to 720p RGB
SLOT_WAIT_S = 60.0  # a worker waits this long for a free slot (it should never wait)
SHARED_MEMORY_NEEDED = 2**30  # less free /dev/shm (a container's 64 MB): frames are pickled


def shared_memory_room() -> int:
    """Free bytes in /dev/shm, where torch passes tensors between processes (0 if absent).
    A few 1080p videos in flight fill a container's default 64 MB, and a worker that runs
    out dies of a bus error, so with less than `SHARED_MEMORY_NEEDED` frames are pickled."""
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return 0


def decoding_workers(workers: int, videos: int) -> int:
    """How many of `workers` DataLoader processes decode `videos` videos: one per
    `ROWS_PER_WORKER` at most (a worker costs about a second to start, so a small rebuild
    decodes in the stage's own process)."""
    return min(workers, videos // ROWS_PER_WORKER)


class SlotsExhausted(RuntimeError):
    """A worker found no free slot: a broken invariant of the stage, not a bad video, so it
    stops the stage (rows written before it are kept) instead of failing the row."""


@dataclass(frozen=True)
class SlotFrames:
    """Where a worker left a video's frames: the slot and the frames' shape."""

    slot: int
    shape: tuple[int, ...]


class FrameSlots:
    """Shared-memory buffers, one video's frames each, that decoding workers fill and the
    stage's process reads, reused video after video (see the module docstring)."""

    def __init__(self, count: int, size: int):
        # made in shared memory at once (torch reserves its pages: a full /dev/shm is an error
        # here, never a bus error in a worker); `share_memory_()` would copy it there
        memory = torch.UntypedStorage._new_shared(count * size)
        self.memory = torch.empty(0, dtype=torch.uint8).set_(memory).view(count, size)
        self.free = torch.multiprocessing.Queue()
        for slot in range(count):
            self.free.put(slot)

    @classmethod
    def fitting(cls, n_frames: int, count: int) -> FrameSlots | None:
        """`count` slots of `n_frames` 720p frames, or None where /dev/shm has no room for
        them beside `SHARED_MEMORY_NEEDED` (what larger videos still need)."""
        size = n_frames * SLOT_FRAME_BYTES
        if shared_memory_room() < count * size + SHARED_MEMORY_NEEDED:
            return None
        return cls(count, size)

    def fill(self, batches: list[np.ndarray]) -> SlotFrames | None:
        """Write a video's frame batches into a free slot (in a worker); None when they do
        not fit in one."""
        shape = (sum(len(b) for b in batches), *batches[0].shape[1:])
        size = math.prod(shape)
        if size > self.memory.shape[1] or batches[0].dtype != np.uint8:
            return None
        try:
            slot = self.free.get(timeout=SLOT_WAIT_S)
        except queue.Empty:
            raise SlotsExhausted(
                f"no free frame slot in {SLOT_WAIT_S:g} s: more videos are in flight than "
                "the slots allow (a DataLoader that prefetches more than PREFETCH per worker)"
            ) from None
        try:
            np.concatenate(batches, out=self.memory[slot, :size].numpy().reshape(shape))
        except BaseException:
            self.free.put(slot)
            raise
        return SlotFrames(slot, shape)

    def frames(self, held: SlotFrames) -> torch.Tensor:
        """The frames a worker left in a slot, as a uint8 tensor over the slot (no copy)."""
        return self.memory[held.slot, : math.prod(held.shape)].view(held.shape)

    def release(self, held: SlotFrames) -> None:
        """Give a slot back once its frames have been read."""
        self.free.put(held.slot)


class SampledFrames(torch.utils.data.Dataset):
    """Decodes the T frames of one video per item (runs in DataLoader workers)."""

    def __init__(
        self,
        rows: np.ndarray,
        videos: dict[str, np.ndarray],
        n_frames: int,
        decoder: str,
        slots: FrameSlots | None = None,
    ):
        self.rows, self.videos, self.n_frames, self.decoder = rows, videos, n_frames, decoder
        self.slots = slots
        self.shared_memory = shared_memory_room() >= SHARED_MEMORY_NEEDED

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Any, Any, str]:
        """(row, times, frames, warning), or (row, None, its `Failure`, ''). Frames are a
        `SlotFrames` where they went into a slot, else an array (a tensor where /dev/shm
        has room: it leaves a worker unpickled)."""
        row = int(self.rows[i])
        warnings: list[str] = []
        try:
            if self.videos["error"][row]:
                raise VideoError(UNREADABLE_VIDEO + str(self.videos["error"][row]))
            times = segment_centres(float(self.videos["duration"][row]), self.n_frames)
            path = self.videos["path"][row]
            batches = [
                b for _, b in read_frames(path, times, self.n_frames, self.decoder, warnings.append)
            ]
            held = self.slots.fill(batches) if self.slots is not None else None
            frames: Any = held or np.concatenate(batches)
            if held is None and self.shared_memory:
                frames = torch.from_numpy(frames)
            return row, times, frames, "; ".join(warnings)
        except SlotsExhausted:
            raise
        except Exception as exc:  # reported as this row's failure by the main process
            return row, None, Failure.of(exc), ""


def _keep(item: Any) -> Any:
    return item


def decoded_videos(
    rows: np.ndarray,
    videos: dict[str, np.ndarray],
    n_frames: int,
    decoder: str,
    workers: int,
    use_slots: bool = True,
) -> Iterator[tuple[int, Any, Any, str]]:
    """(row, times, frames, warning) for `rows` in order, one video each, decoded by
    `decoding_workers(workers, len(rows))` processes; a failed row gives (row, None, its
    `Failure`, ''). A video's frames (uint8 (T, H, W, 3), a tensor or an array) are valid
    until the next video is taken: their slot is then given back to the workers.
    `use_slots=False` hands each video over in a fresh shared tensor (what bench.extraction
    compares the slots with)."""
    used = decoding_workers(workers, len(rows))
    slots = FrameSlots.fitting(n_frames, PREFETCH * used + 1) if used and use_slots else None
    loader = torch.utils.data.DataLoader(
        SampledFrames(rows, videos, n_frames, decoder, slots),
        batch_size=None,
        num_workers=used,
        collate_fn=_keep,
        prefetch_factor=PREFETCH if used else None,
    )
    for row, times, frames, warning in loader:
        if not isinstance(frames, SlotFrames):
            yield row, times, frames, warning
            continue
        try:
            yield row, times, slots.frames(frames), warning
        finally:
            slots.release(frames)
