"""`tcd report` on a small work dir where one video's OCR failed: the failed true video is
marked with its stage and message and never shown as a hit, a true video outside the top k
shows its rank, query words are marked in the best window caption with its span, and the
run's own curves are embedded (or a zero-shot run says it has none)."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.datasets import read_textvr
from retrieval.report import highlight, query_words
from tests.test_retrieval import trained_work

runner = CliRunner()
SPAN = re.compile(r"\((\d+\.\d)–(\d+\.\d) s\)")
HIT_VIDEO = re.compile(r"<br><code>([^<]*)</code></div>")  # the video id of each shown hit


@pytest.fixture(scope="module")
def failed_work(synth_set, tmp_path_factory) -> tuple[Path, str]:
    """(a trained work dir whose first train query's video failed OCR, that video's id)."""
    root = tmp_path_factory.mktemp("report")
    synth = Path(shutil.copytree(synth_set, root / "synth"))
    first = json.loads((synth / "TextVR_train.json").read_text())[0]["path"]
    video = next(v for v in read_textvr(synth).videos if v.id == first)
    video.ocr_path.write_text("{not json")  # its OCR fails, so captions and ocr_text do too
    return trained_work(synth, root), first


def report(work: Path, tmp_path: Path, run: str, *extra: str) -> str:
    page = tmp_path / f"{run}.html"
    args = ["report", "--work", str(work), "--run", run, "--split", "train", "--out", str(page)]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    return page.read_text(encoding="utf-8")


def test_report_marks_a_failed_true_video_ranks_the_rest_and_marks_caption_words(
    failed_work, tmp_path
):
    work, failed = failed_work
    page = report(work, tmp_path, "r", "--top", "1", "--queries", "100")
    # the query whose true video failed is shown, marked with the stage and its message
    marks = re.findall(r"<p class='failed'>(.*?)</p>", page)
    assert marks and all(unescape(m).startswith("true video failed: ocr: ") for m in marks)
    assert "not valid OCR JSON" in unescape(marks[0]) and failed in unescape(marks[0])
    assert "the metrics score them as zeros" in page
    # a failed video is never a hit
    shown = [unescape(v) for v in HIT_VIDEO.findall(page)]
    assert shown and failed not in shown
    # with one video shown per query, true videos outside it give their rank and score
    ranks = re.findall(r"true video at rank (\d+), S [+-]\d+\.\d{3}", page)
    assert ranks and all(int(r) > 1 for r in ranks)
    # query words are marked in a best caption, and the window's span is shown
    marked = {m.casefold() for m in re.findall(r"<mark>(\w+)</mark>", page)}
    queries = {w for q in re.findall(r"<h3>(.*?)</h3>", page) for w in query_words(unescape(q))}
    assert marked and marked <= queries
    spans = [(float(a), float(b)) for a, b in SPAN.findall(page)]
    assert spans and all(0 <= start < end for start, end in spans)
    # the run's own training curves
    assert "<img alt='training curves' src='data:image/png;base64," in page
    assert "no training curves" not in page


def test_zero_shot_report_says_it_has_no_curves(failed_work, tmp_path):
    work, failed = failed_work
    page = report(work, tmp_path, "zero-shot", "--queries", "2")
    assert "no training curves (zero-shot run)" in page
    assert "alt='training curves'" not in page
    assert "true video failed: ocr: " in page  # the first query's video is the failed one


def test_highlight_escapes_before_marking():
    words = query_words("The bakery & AMP sign")
    assert words == {"bakery", "amp", "sign"}
    assert highlight("<b>Bakery</b> & amp", words) == (
        "&lt;b&gt;<mark>Bakery</mark>&lt;/b&gt; &amp; <mark>amp</mark>"
    )


def test_the_true_video_s_rank_counts_ties_as_tcd_eval_does():
    """A stable sort put a tied true video first and outlined it, where the metrics on the
    same page counted it as a miss (ties averaged)."""
    from retrieval.report import QueryResult, rank_among, render_query

    scores = np.array([0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    candidates = np.arange(6)
    assert rank_among(scores, candidates, 0) == (3.0, 4)  # 5 tied at the top: (1 + 5) / 2
    assert rank_among(scores, candidates, 5) == (6.0, 0)
    assert rank_among(scores, np.array([1, 5]), 5) == (2.0, 0)
    shown = QueryResult("q", "v0", [], true_rank=3.0, true_ties=4, true_score=0.0)
    assert "tied with 4 other video(s): rank 3 as tcd eval counts it" in render_query(shown)
    alone = QueryResult("q", "v5", [], true_rank=6.0, true_score=-1.0)
    assert "true video at rank 6, S -1.000</p>" in render_query(alone)
