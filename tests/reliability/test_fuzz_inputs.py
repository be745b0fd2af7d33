"""Malformed annotations and OCR files: a typed, clear error or a valid result, never a
crash trace (issue: reliability campaign). Inputs are generated with hypothesis."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.errors import TcdError
from pipeline.datasets import read_textvr
from pipeline.ocr import read_kwai_ocr

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
    path = tmp_path_factory.mktemp("ocr") / "clip.json"
    text = json.dumps(tracks)
    path.write_bytes(text.encode("utf-8")[:-1] if raw and text else text.encode("utf-8"))
    try:
        lines = read_kwai_ocr(path, fps=25.0)
    except TcdError as exc:
        assert str(path) in str(exc)  # names the file
        return
    for line in lines:
        assert isinstance(line["text"], str) and line["t"] >= 0
        assert len(line["box"]) == 4 and all(len(p) == 2 for p in line["box"])
