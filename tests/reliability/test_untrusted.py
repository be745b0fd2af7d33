"""Untrusted files: a checkpoint carrying a pickle payload is refused before any code runs
(`torch.load(weights_only=True)`), through the library and through `tcd eval`; the HTML report
escapes OCR text, captions and video names (a `<script>` stays text)."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from heads.checkpoint import CheckpointError, load_checkpoint
from retrieval.report import Hit, QueryResult, render_report
from tests.conftest import tcd_process
from tests.test_retrieval import _parse_images


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file proves the code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_pickle_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"model": {}, "x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: not a readable tensors-only"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_crafted_checkpoint_in_a_run_is_refused_by_the_cli(encoded, tmp_path):
    _, reference = encoded
    work = Path(shutil.copytree(reference, tmp_path / "work"))
    run = work / "runs" / "evil"
    run.mkdir(parents=True)
    shutil.copy("configs/tcd.toml", run / "config.toml")
    marker = tmp_path / "payload-ran"
    torch.save({"model": {}, "x": Payload(marker)}, run / "best.pt")
    proc = tcd_process("eval", "--work", str(work), "--run", "evil")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "not a readable tensors-only checkpoint" in err, out + err
    assert "Traceback" not in err and not marker.exists()


def test_report_escapes_text_and_embeds_images():
    frame = np.zeros((20, 30, 3), np.uint8)
    hit = Hit(
        "A/<b>.mp4", 0.5, {"tv": 0.1}, ["<script>alert(1)</script>", ""], [frame, frame], True
    )
    page = render_report(
        "t",
        [QueryResult("q <i>", "A/<b>.mp4", [hit])],
        {"t2v": dict.fromkeys(["R@1", "R@5", "R@10", "MdR", "MnR"], 1.0)},
    )
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "q &lt;i&gt;" in page and "A/&lt;b&gt;.mp4" in page and "<b>" not in page
    sources = _parse_images(page)
    assert len(sources) == 2
    for src in sources:
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
