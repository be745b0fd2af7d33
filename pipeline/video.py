"""Video access: metadata probing (and, with the OCR and encode stages, frame decoding)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import VideoError


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    fps: float
    n_frames: int
    width: int
    height: int


def probe(path: str | Path) -> VideoInfo:
    """Read duration, frame rate and frame count from the container (no decoding; where the
    container holds no exact length, from the video stream's packets: see `_indexed`).

    Raises `VideoError` naming the file when it cannot be opened or has no video stream.
    """
    import av  # PyAV loads with the first video read, not with `tcd --help`

    path = Path(path)
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            if _indexed(container) and stream.duration and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
                n_frames = int(stream.frames or round(duration * fps))
            else:
                duration, n_frames, data_end = _scan_packets(container, stream, fps)
                declared = container.duration / av.time_base if container.duration else 0.0
                if declared > data_end + TRUNCATION_SLACK_S:
                    # the file holds less than its header says (a cut download): keep the
                    # header's length, so the frames sampled past the cut are warned of
                    duration = declared
            if duration <= 0 and fps > 0 and n_frames > 0:
                duration = n_frames / fps
            if duration <= 0 or n_frames <= 0:
                raise VideoError(f"{path}: no frames (duration {duration:.2f}s)")
            return VideoInfo(duration, fps, n_frames, stream.width, stream.height)
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found") from None
    except PermissionError:
        raise VideoError(f"{path}: permission denied") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{path}: cannot open video ({exc})") from None


def _indexed(container: Any) -> bool:
    """Whether the container indexes its streams' exact lengths: MP4/MOV (the moov atom) and
    AVI (one chunk per frame). Matroska, WebM and FLV give a container length that counts
    from time 0 (a video starting at 2 s, or audio running on, lengthens it) and MPEG
    program streams an estimate from the bit rate."""
    name = container.format.name
    return "mp4" in name or "mov" in name or name == "avi"


def _scan_packets(container: Any, stream: Any, fps: float) -> tuple[float, int, float]:
    """The video stream's length in seconds (first frame's start to last frame's end) and
    frame count, from its packets' timestamps (demuxing only, no decoding), and where the
    last packet of any stream ends (s; -inf without times). A stream whose packets carry no
    times (a raw H.264 file) gets its count over `fps`; a read error ends the scan with what
    was read."""
    import av

    first, end, count, data_end = math.inf, -math.inf, 0, -math.inf
    try:
        for packet in container.demux():
            start = packet.pts if packet.pts is not None else packet.dts
            if packet.size == 0 or packet.time_base is None:  # the final empty packets
                continue
            # a video packet without a duration shows its frame for one frame period
            video = packet.stream.index == stream.index
            length = packet.duration or (1 / (fps * packet.time_base) if video and fps else 0)
            if start is not None:
                data_end = max(data_end, float((start + length) * packet.time_base))
            if not video:
                continue
            count += 1
            if start is not None:
                first = min(first, start)
                end = max(end, start + length)
    except av.error.FFmpegError:
        pass
    if first == math.inf:
        return (count / fps if fps > 0 else 0.0), count, data_end
    return float((end - first) * stream.time_base), count, data_end


# -- frame sampling -------------------------------------------------------------------------
def segment_centres(duration: float, n: int) -> np.ndarray:
    """The `n` frame times used by captions and encode: centres of n equal segments."""
    return (np.arange(n) + 0.5) * (duration / n)


def ocr_times(duration: float, fps: float, max_frames: int) -> np.ndarray:
    """Times sampled at `fps` (segment centres of 1/fps s), thinned uniformly to `max_frames`."""
    count = max(1, int(np.floor(duration * fps + 1e-6)))
    times = segment_centres(duration, count)
    if count > max_frames:
        times = times[np.linspace(0, count - 1, max_frames).round().astype(int)]
    return times


# -- decoding -------------------------------------------------------------------------------
FrameBatch = tuple[np.ndarray, np.ndarray]  # (times in s, frames (B, H, W, 3) uint8 RGB)
Warn = Callable[[str], None]
# A sampled time this far past the end of the last frame the stream holds is "not covered":
# the stream is truncated (or shorter than the container says) and the last frame stands in.
TRUNCATION_SLACK_S = 0.5


class Decoder(StrEnum):
    """Frame decoders: `auto` (decord, PyAV if decord cannot open or decode the file)."""

    auto = "auto"
    decord = "decord"
    pyav = "pyav"


def _ignore(message: str) -> None:
    pass


def _warn_truncated(
    path: str | Path, times: np.ndarray, end: float, warn: Warn, why: str = ""
) -> None:
    """Warn when the last frame a stream holds (ending at `end` s) stands in for sampled
    times: those well past it, or all of `times` after a decode error (`why`)."""
    late = len(times) if why else int((times > end + TRUNCATION_SLACK_S).sum())
    if late:
        reason = f" ({why})" if why else ""
        warn(
            f"{path}: truncated stream{reason}: its frames end at {end:.2f} s; "
            f"the last one stands in for {late} later sampled frame(s)"
        )


def read_frames(
    path: str | Path,
    times: np.ndarray,
    batch_size: int = 8,
    backend: str = "auto",
    warn: Warn = _ignore,
) -> Iterator[FrameBatch]:
    """Yield the frames nearest to `times` (sorted), `batch_size` at a time, streaming.

    `backend`: a `Decoder` ("auto": decord when importable, PyAV if decord fails to open
    the file or to decode its first batch). Raises `VideoError` naming the file on failure.
    A truncated stream (frames end before the sampled times do) repeats its last frame for the
    times past its end and calls `warn` with a message naming the file.
    """
    times = np.asarray(times, dtype=np.float64)
    if backend not in tuple(Decoder):
        raise VideoError(f"unknown decoder backend {backend!r}")
    if backend in ("auto", "decord"):
        try:
            reader = _open_decord(path)
        except VideoError:
            if backend == "decord":
                raise
            reader = None
        if reader is not None:
            started = False
            try:
                for batch in _decord_batches(path, reader, times, batch_size, warn):
                    started = True
                    yield batch
                return
            except VideoError:
                if backend == "decord" or started:
                    raise
                # auto: decord opened the file but cannot decode it (e.g. 1x1 pixels)
    yield from _pyav_batches(path, times, batch_size, warn)


def require_decoder(backend: str) -> None:
    """Refuse, before any video is read, a decoder this install cannot run (otherwise every
    video would be recorded as failed)."""
    if backend == Decoder.decord:
        try:
            import decord  # noqa: F401
        except ImportError as exc:
            raise VideoError(
                f"--decoder decord needs the decord package ({exc}); install it "
                "(requirements.txt pins it) or use --decoder auto or pyav"
            ) from None


def _open_decord(path: str | Path) -> Any:
    try:
        import decord
    except ImportError as exc:
        raise VideoError(f"decord is not installed ({exc})") from None
    try:
        return decord.VideoReader(str(path), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError
        raise VideoError(f"{path}: decord cannot open it ({exc})") from None


def _decord_batches(
    path: str | Path, reader: Any, times: np.ndarray, batch_size: int, warn: Warn
) -> Iterator[FrameBatch]:
    fps = float(reader.get_avg_fps() or 0.0)
    n = len(reader)  # decord indexes the frames the file really holds
    if n == 0 or fps <= 0:
        raise VideoError(f"{path}: no frames")
    # each frame's (start, end) in seconds, from the container: the frame shown at time t is
    # the last one starting at or before it (as `_pyav_batches` picks), which `t * fps` only
    # gives at a constant frame rate (phones record a variable one)
    spans = np.asarray(reader.get_frame_timestamp(np.arange(n)), dtype=np.float64)
    if not _plausible_spans(spans, n, fps):
        # AVI holds no presentation times, MPEG program streams and very short Matroska
        # files lose some in decord (+-9e17 s): frames would be picked at random, and
        # decord's seeks in such files were seen to return other frames than asked. Raised
        # before any frame, so `auto` reads the file with PyAV.
        raise VideoError(
            f"{path}: decord reports no usable frame times; --decoder pyav reads this file"
        )
    _warn_truncated(path, times, float(spans[-1, 1]), warn)
    index = np.clip(np.searchsorted(spans[:, 0], times + 1e-6, side="right") - 1, 0, n - 1)
    for start in range(0, len(times), batch_size):
        chunk = index[start : start + batch_size]
        try:
            frames = reader.get_batch(chunk.tolist()).asnumpy()
            # decord goes on decoding in the background after a seek and keeps what it
            # decodes (dmlc/decord#157, #197): on a 10-minute video that tripled peak memory
            # while the frames were being read by OCR. Seeking back to 0 stops it.
            reader.seek(0)
        except Exception as exc:
            raise VideoError(f"{path}: decode failed near frame {int(chunk[0])} ({exc})") from None
        yield times[start : start + batch_size], frames


def _plausible_spans(spans: np.ndarray, n: int, fps: float) -> bool:
    """Whether decord's (start, end) frame times can be frame times: finite, starting near 0
    (decord counts from the stream's start), in order, and within twice the nominal length."""
    starts = spans[:, 0]
    return bool(
        np.isfinite(spans).all()
        and starts[0] > -1.0
        and (np.diff(starts) >= 0).all()
        and starts[-1] < 2 * n / fps + 60.0
    )


def _pyav_batches(
    path: str | Path, times: np.ndarray, batch_size: int, warn: Warn
) -> Iterator[FrameBatch]:
    """Decode sequentially, keeping for each target time the last frame starting at or before it."""
    if len(times) == 0:
        return
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"{path}: cannot open video ({exc})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        picked: list[np.ndarray] = []
        picked_times: list[float] = []
        target = 0
        previous = None
        rate = float(stream.average_rate or stream.guessed_rate or 0.0)
        # times count from the stream's start, as `probe`'s duration does (an MPEG-TS
        # stream starts at 1.4 s, say)
        offset = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        # AVI holds no presentation times (a frame's is its decoding slot, out of order with
        # B-frames) but a constant rate: the k-th frame shown starts at k / rate, as does a
        # frame without a time (a raw H.264 stream)
        counted = container.format.name == "avi"
        end = 0.0  # where the last decoded frame ends
        size: tuple[int, int] | None = None
        broken = ""
        try:
            for shown, frame in enumerate(container.decode(stream)):
                if (counted or frame.time is None) and rate > 0:
                    t = shown / rate
                else:
                    t = float(frame.time or 0.0) - offset
                while target < len(times) and t > times[target] + 1e-6 and previous is not None:
                    picked.append(previous)
                    picked_times.append(times[target])
                    target += 1
                if target >= len(times):
                    break
                # at the first frame's size: a stream may change resolution midway
                size = size or (frame.width, frame.height)
                previous = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                end = t + (1 / rate if rate > 0 else 0.0)
                if len(picked) >= batch_size:
                    yield np.array(picked_times), np.stack(picked)
                    picked, picked_times = [], []
        except (av.error.FFmpegError, ValueError) as exc:
            if previous is None:
                raise VideoError(f"{path}: decode failed ({exc})") from None
            broken = f"decoding stopped: {exc}"
        if previous is None:
            raise VideoError(f"{path}: no frames could be decoded")
        if target < len(times):  # the frames decoded so far stand in for the rest
            _warn_truncated(path, times[target:], end, warn, broken)
        while target < len(times):
            picked.append(previous)
            picked_times.append(times[target])
            target += 1
        for start in range(0, len(picked), batch_size):
            yield (
                np.array(picked_times[start : start + batch_size]),
                np.stack(picked[start : start + batch_size]),
            )
