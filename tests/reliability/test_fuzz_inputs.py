"""Malformed annotations and OCR files: a typed, clear error or a valid result, never a
crash trace (issue: reliability campaign). Inputs are generated with hypothesis."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from xml.sax.saxutils import escape as escape_xml

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.errors import TcdError
from pipeline.datasets import read_textvr
from pipeline.ocr import read_kwai_ocr
from pipeline.ocr_import import (
    read_bovtext_ocr,
    read_icdar_ocr,
    read_imported_ocr,
    read_jsonl_ocr,
)

# `make soak` raises the number of generated inputs per test (TCD_FUZZ_EXAMPLES)
FUZZ = settings(
    max_examples=int(os.environ.get("TCD_FUZZ_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# strings that have broken readers elsewhere: climbing and absolute paths, NUL, emoji,
# right-to-left text, lone surrogates are not valid JSON text so they are left out
TRICKY = st.sampled_from(
    [
        "",
        "..",
        "../outside.mp4",
        "/etc/passwd",
        "a/../../b.mp4",
        "Sports/clip.mp4",
        "Sports/../Sports/clip.mp4",
        "nul\x00byte.mp4",
        "emoji 🎬📺.mp4",
        "שלט חנות.mp4",
        "C:\\windows\\clip.mp4",
        "x" * 5000,
    ]
)
TEXT = st.one_of(TRICKY, st.text(max_size=40))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
CAPTION = st.one_of(st.fixed_dictionaries({"caption": st.one_of(TEXT, JSON)}), JSON)
ENTRY = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {
            "path": st.one_of(TEXT, JSON),
            "captions_info": st.one_of(st.lists(CAPTION, max_size=3), JSON),
        },
        optional={
            "videos_info": st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "split": st.one_of(st.sampled_from(["train", "test"]), JSON),
                        "Kwai_OCR": st.one_of(TEXT, JSON),
                    },
                ),
                JSON,
            )
        },
    ),
)


@FUZZ
@given(entries=st.one_of(st.lists(ENTRY, max_size=6), JSON))
def test_textvr_annotations(tmp_path_factory, entries):
    root = tmp_path_factory.mktemp("textvr")
    (root / "TextVR_train.json").write_text(json.dumps(entries), encoding="utf-8")
    try:
        dataset = read_textvr(root)
    except TcdError as exc:
        assert str(exc)  # a message a user can read
        return
    for video in dataset.videos:  # whatever was accepted stays inside the dataset root
        assert Path(video.path).resolve().is_relative_to(root.resolve())
        assert video.captions and all(isinstance(c, str) for c in video.captions)


@FUZZ
@given(data=st.binary(max_size=200))
def test_textvr_annotation_bytes(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("textvr")
    (root / "TextVR_train.json").write_bytes(data)
    try:
        read_textvr(root)
    except TcdError:
        pass


TRACK = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {
            "text": st.one_of(TEXT, JSON),
            "tracks": st.one_of(
                st.dictionaries(
                    st.one_of(st.integers(-5, 10**12).map(str), TEXT),
                    st.one_of(st.lists(st.one_of(st.floats(), st.integers()), max_size=10), JSON),
                    max_size=4,
                ),
                JSON,
            ),
        },
        optional={"score": st.one_of(st.floats(allow_nan=False), JSON)},
    ),
)


@FUZZ
@given(tracks=st.one_of(st.dictionaries(TEXT, TRACK, max_size=4), JSON), raw=st.booleans())
def test_kwai_ocr_files(tmp_path_factory, tracks, raw):
    lines = read_fuzzed_json(tmp_path_factory, "clip.json", tracks, raw, read_kwai_ocr)
    for line in lines or []:
        assert isinstance(line["text"], str) and line["t"] >= 0
        assert len(line["box"]) == 4 and all(len(p) == 2 for p in line["box"])


def read_fuzzed_json(tmp_path_factory, name: str, value, raw: bool, read) -> list | None:
    """`read(path, fps=25.0)` of `value` written as JSON to a fresh file `name` (its last
    byte cut when `raw`): the lines, or None when it was refused with a `TcdError` naming
    the file (and the line, or frame and entry)."""
    path = tmp_path_factory.mktemp("ocr") / name
    text = json.dumps(value)
    path.write_bytes(text.encode("utf-8")[:-1] if raw and text else text.encode("utf-8"))
    try:
        return read(path, fps=25.0)
    except TcdError as exc:
        assert str(path) in str(exc)
        return None


# -- the OCR importers of issue 18: a typed error naming the file (and line), or valid lines
def assert_valid_lines(lines) -> None:
    for line in lines:
        assert isinstance(line["text"], str) and line["t"] >= 0 and math.isfinite(line["t"])
        assert math.isfinite(line["score"]) and isinstance(line["track"], int)
        assert len(line["box"]) == 4 and all(len(p) == 2 for p in line["box"])
    assert [line["t"] for line in lines] == sorted(line["t"] for line in lines)


NUMBER = st.one_of(st.integers(-5, 10**6), st.floats(), JSON)
POINTS = st.one_of(st.lists(st.one_of(st.integers(-5, 2000), st.floats()), max_size=9), JSON)
DETECTION = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"t": NUMBER, "text": st.one_of(TEXT, JSON)},
        optional={
            "score": NUMBER,
            "box": st.one_of(st.lists(POINTS, max_size=5), POINTS),
            "track": NUMBER,
        },
    ),
)


@FUZZ
@given(detections=st.lists(DETECTION, max_size=6), cut=st.integers(0, 40), blank=st.booleans())
def test_jsonl_ocr_files(tmp_path_factory, detections, cut, blank):
    path = tmp_path_factory.mktemp("ocr") / "clip.jsonl"
    text = "\n".join(json.dumps(d) for d in detections) + ("\n\n" if blank else "")
    path.write_bytes(text.encode("utf-8")[: len(text) - cut] if cut else text.encode("utf-8"))
    try:
        lines = read_jsonl_ocr(path)
    except TcdError as exc:
        assert str(path) in str(exc) and " line " in str(exc)  # names the file and line
        return
    assert_valid_lines(lines)


BOV_ENTRY = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {
            "points": POINTS,
            "tracking ID": st.one_of(st.integers(0, 99), st.integers(0, 99).map(str), JSON),
            "transcription": st.one_of(st.sampled_from(["###", "SALE"]), TEXT, JSON),
        },
        optional={"category": st.one_of(st.sampled_from(["title", "scene"]), JSON)},
    ),
)
FRAME_KEY = st.one_of(
    st.integers(-2, 10**6).map(lambda n: f"frame_{n}"), st.integers(-2, 10**6).map(str), TEXT
)


@FUZZ
@given(
    frames=st.one_of(
        st.dictionaries(FRAME_KEY, st.one_of(st.lists(BOV_ENTRY, max_size=3), JSON), max_size=4),
        JSON,
    ),
    raw=st.booleans(),
)
def test_bovtext_ocr_files(tmp_path_factory, frames, raw):
    lines = read_fuzzed_json(tmp_path_factory, "gt_video_1.json", frames, raw, read_bovtext_ocr)
    if lines is not None:
        assert_valid_lines(lines)


XML_TEXT = st.text(max_size=12)


def escape(value: str) -> str:
    """Text as an XML attribute value or element text."""
    return escape_xml(value, {'"': "&quot;"})


XML_POINT = st.builds(
    lambda x, y: f'<Point x="{escape(x)}" y="{escape(y)}" />',
    st.one_of(st.integers(-5, 2000).map(str), XML_TEXT),
    st.one_of(st.integers(-5, 2000).map(str), XML_TEXT),
)
XML_OBJECT = st.builds(
    lambda text, track, points: (
        f'<object Transcription="{escape(text)}" ID="{track}" Quality="LOW">'
        + "".join(points)
        + "</object>"
    ),
    st.one_of(st.sampled_from(["##DONT#CARE##", "Alcampo"]), XML_TEXT),
    st.integers(0, 9),
    st.lists(XML_POINT, min_size=3, max_size=5),
)
XML_FRAME = st.builds(
    lambda index, objects: f'<frame ID="{escape(index)}">' + "\n".join(objects) + "</frame>",
    st.one_of(st.integers(-1, 10**5).map(str), XML_TEXT),
    st.lists(st.one_of(XML_OBJECT, XML_POINT, XML_TEXT.map(escape)), max_size=3),
)


@FUZZ
@given(
    frames=st.lists(st.one_of(XML_FRAME, XML_OBJECT), max_size=4),
    cut=st.integers(0, 30),
    junk=st.binary(max_size=8),
)
def test_icdar_ocr_files(tmp_path_factory, frames, cut, junk):
    path = tmp_path_factory.mktemp("ocr") / "Video_1_1_2_GT.xml"
    text = '<?xml version="1.0" encoding="us-ascii"?>\n<Frames>\n' + "\n".join(frames)
    data = (text + "\n</Frames>\n").encode("utf-8")
    path.write_bytes(data[: len(data) - cut] + junk if cut else data)
    try:
        lines = read_icdar_ocr(path, fps=25.0)
    except TcdError as exc:
        assert str(path) in str(exc) and " line " in str(exc)  # names the file and line
        return
    assert_valid_lines(lines)


@FUZZ
@given(data=st.binary(max_size=200), fmt=st.sampled_from(["jsonl", "bovtext", "icdar", "kwai"]))
def test_imported_ocr_bytes(tmp_path_factory, data, fmt):
    path = tmp_path_factory.mktemp("ocr") / "clip.any"
    path.write_bytes(data)
    try:
        lines = read_imported_ocr(path, 25.0, fmt)
    except TcdError as exc:
        assert str(path) in str(exc)
        return
    assert_valid_lines(lines)
