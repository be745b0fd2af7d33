"""The bad-video zoo. Odd but valid videos (wrong extension, one frame, variable frame rate,
rotated, 1x1 pixels, 4K, an hour long) encode like any other; broken ones (zero bytes,
truncated, no frames, missing, garbage, audio only, unreadable, a symlink out of the dataset
root) each fail alone with a message naming the video, and keep their row and matrix column
(zero features, a warning, listed as missing)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from cache import WorkDir
from cli.common import features
from cli.main import app
from heads.config import RunConfig, TrainSettings
from heads.modules import HeadSettings
from heads.run_dir import RunDir
from heads.train import train
from pipeline.datasets import read_textvr
from pipeline.manifest import build_manifest
from pipeline.settings import PipelineSettings, save_settings
from tests.test_stages import KWAI, run_all


def write_video(
    path: Path,
    size: tuple[int, int] = (64, 64),
    frames: int = 10,
    fps: int = 10,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    times: list[float] | None = None,
    container: str | None = None,
    rotate: int | None = None,
) -> None:
    """A video of smooth moving gradients (cheap to encode at any size)."""
    width, height = size
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotate is not None:
            stream.metadata["rotate"] = str(rotate)
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            rgb = ((x + y + 20 * i) % 256 * np.ones((1, 1, 3))).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            if times is not None:
                frame.pts, frame.time_base = int(1000 * times[i]), Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


VFR_TIMES = [0.0, 0.03, 0.4, 0.45, 1.3, 1.32, 1.9, 2.6, 2.65, 3.1]
ODD = {  # row -> (case, writer)
    0: ("wrong extension (Matroska/MPEG-4 Part 2 in a .mp4)", lambda p: write_video(p, codec="mpeg4", container="matroska")),  # noqa: E501
    1: ("one frame", lambda p: write_video(p, frames=1)),
    2: ("variable frame rate", lambda p: write_video(p, frames=10, times=VFR_TIMES)),
    3: ("rotated (portrait, rotate=90 tag)", lambda p: write_video(p, (96, 160), rotate=90)),
    4: ("1x1 pixels", lambda p: write_video(p, (1, 1), pix_fmt="yuv444p")),
    5: ("4K", lambda p: write_video(p, (3840, 2160), frames=4)),
    10: ("an hour long (1 fps)", lambda p: write_video(p, (32, 32), frames=3600, fps=1)),
}  # fmt: skip


def test_odd_but_valid_videos_encode_like_any_other(synth_copy, tmp_path):
    videos = read_textvr(synth_copy).videos
    for row, (_, write) in ODD.items():
        write(videos[row].path)
    work = WorkDir(tmp_path / "work", create=True)
    build_manifest(work, read_textvr(synth_copy), progress=False)
    assert list(work.manifest.videos.column("error")) == [""] * 12
    reports = run_all(work)
    assert [(r.stage, r.computed, r.failed) for r in reports[:4]] == [
        (stage, 12, 0) for stage in ("ocr", "captions", "frames", "ocr_text")
    ]
    frames = next(g for g in work.stages() if g.stage == "frames")
    assert frames.warnings() == []  # whole streams: no truncation warning
    embeddings = frames.group["frames"][:].astype(np.float32)
    norms = np.linalg.norm(embeddings, axis=-1)
    assert np.isfinite(embeddings).all() and np.allclose(norms, 1, atol=1e-2)
    duration = work.manifest.videos.column("duration")
    assert duration[10] == pytest.approx(3600, abs=1) and duration[1] == pytest.approx(0.1)


def _zero_frame_video(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()  # write the header, then close without a single frame


@contextlib.contextmanager
def as_unprivileged() -> Iterator[None]:
    """Run the block as user `nobody` when we are root (root reads any file), else as is."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


BAD = {  # row -> (case, what the message must say besides the video's name)
    1: ("zero bytes", "cannot open video"),
    2: ("truncated mid-stream", ""),
    3: ("no frames", "no video stream"),
    4: ("missing", "file not found"),
    5: ("garbage bytes", "cannot open video"),
    6: ("audio only", "no video stream"),
    7: ("unreadable permissions", "ermission denied"),
    10: ("symlink out of the dataset root", "outside the dataset root"),
}


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-writable folder (the unreadable case runs the manifest as `nobody`)."""
    path = Path(tempfile.mkdtemp(prefix="tcd-zoo-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_broken_videos_fail_alone_and_keep_their_column(synth_set, open_dir):
    root = Path(shutil.copytree(synth_set, open_dir / "set"))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    videos = read_textvr(root).videos
    outside = open_dir / "elsewhere.mp4"
    shutil.copy(videos[0].path, outside)
    for row, (case, _) in BAD.items():
        path = videos[row].path
        if case == "zero bytes":
            path.write_bytes(b"")
        elif case == "truncated mid-stream":
            path.write_bytes(path.read_bytes()[:1500])
        elif case == "no frames":
            path.unlink()
            _zero_frame_video(path)
        elif case == "missing":
            path.unlink()
        elif case == "garbage bytes":
            path.write_bytes(np.random.default_rng(0).bytes(50_000))
        elif case == "audio only":
            write_audio_only(path)
        elif case == "unreadable permissions":
            path.chmod(0)
        else:
            path.unlink()
            path.symlink_to(outside)
    with as_unprivileged():
        work = WorkDir(open_dir / "work", create=True)
        build_manifest(work, read_textvr(root), progress=False)
    reports = {r.stage: r for r in run_all(work)}
    for stage in ("ocr", "captions", "frames", "ocr_text"):
        assert (reports[stage].computed, reports[stage].failed) == (4, 8), stage
    frames = next(g for g in work.stages() if g.stage == "frames")
    errors = dict(frames.errors())
    assert sorted(errors) == sorted(BAD)
    manifest_errors = work.manifest.videos.column("error")
    for row, (case, says) in BAD.items():
        assert videos[row].id in errors[row], case
        assert says in manifest_errors[row] + errors[row], (case, errors[row])

    # the test split keeps both columns, in annotation order; the broken one is zeros
    save_settings(work.path, PipelineSettings(ocr=KWAI))
    test = features(work, "test")
    order = [e["path"] for e in json.loads((root / "TextVR_test.json").read_text())]
    assert [videos[r].id for r in (10, 11)] == test.video_ids == order
    assert test.missing == [videos[10].id] and not test.frames[0].any()
    train(
        RunConfig(HeadSettings(heads=2), TrainSettings(epochs=1, batch_size=2, val_fraction=0)),
        features(work, "train"),
        RunDir(work.path, "r"),
    )
    sim = open_dir / "sim.npy"
    result = CliRunner().invoke(
        app, ["eval", "--work", str(work.path), "--run", "r", "--sim-matrix", str(sim)]
    )
    assert result.exit_code == 0, result.output
    assert "1 video(s) without features scored as zeros" in result.output
    assert np.load(sim).shape == (len(test.queries), 2)
    metrics = json.loads((work.path / "runs" / "r" / "metrics.json").read_text())
    assert metrics["test"]["missing_videos"] == [videos[10].id]
