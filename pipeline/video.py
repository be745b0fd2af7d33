"""Video access: metadata probing (and, with the OCR and encode stages, frame decoding)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from pipeline.errors import VideoError


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    fps: float
    n_frames: int
    width: int
    height: int


def probe(path: str | Path) -> VideoInfo:
    """Read duration, frame rate and frame count from the container (no full decode).

    Raises `VideoError` naming the file when it cannot be opened or has no video stream.
    """
    path = Path(path)
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            n_frames = int(stream.frames or round(duration * fps))
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
