"""Issue 15: OCR reads the T segment centres besides its `ocr.fps` samples, so every caption
window holds a sample at every xi; the OCR group is keyed by T (not xi); the captions stage
measures the share of windows holding a sample (`window_sample_share`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

import pipeline.ocr
from cache import WorkDir
from cli.main import app
from pipeline.captions import (
    run_captions,
    sampled_window_share,
    video_sample_share,
    window_sample_share,
    window_spans,
)
from pipeline.ocr import line_time, ocr_sample_times, read_lines, run_ocr
from pipeline.settings import (
    CaptionSettings,
    EncodeSettings,
    OcrSettings,
    PipelineSettings,
    StageGroups,
    save_settings,
)
from pipeline.stage import last_run
from pipeline.video import ocr_times, segment_centres
from tests.test_stages import KWAI, make_work

XIS = (0.2, 0.4, 1.0)


# -- the sample times -----------------------------------------------------------------------
@pytest.mark.parametrize("duration", [0.04, 0.3, 1.0, 3.0, 5.0, 7.3, 600.0])
@pytest.mark.parametrize("max_frames", [1, 5, 12, 13, 64])
@pytest.mark.parametrize("frames", [1, 4, 12])
def test_the_centres_are_always_sampled_and_the_cap_holds(duration, max_frames, frames):
    ocr = OcrSettings(max_frames=max_frames)
    times = ocr_sample_times(duration, ocr, frames)
    centres = segment_centres(duration, frames)  # exactly the times encode reads
    assert np.isin(centres, times).all()
    assert len(times) <= max(max_frames, frames)
    assert (np.diff(times) > 0).all()  # sorted, no frame twice
    assert ((times > 0) & (times < duration)).all()


def test_how_the_cap_applies_to_the_fps_samples():
    # a long video: the 12 centres, then the 2/s samples thinned to the 52 places left
    long = ocr_sample_times(600.0, OcrSettings(fps=2.0, max_frames=64), 12)
    assert len(long) == 64
    # a cap below T: the centres alone
    np.testing.assert_array_equal(
        ocr_sample_times(600.0, OcrSettings(max_frames=5), 12), segment_centres(600.0, 12)
    )
    # a short video under the cap: every 2/s sample and every centre
    short = ocr_sample_times(5.0, OcrSettings(), 12)
    assert np.isin(ocr_times(5.0, 2.0, 64), short).all() and len(short) == 10 + 12
    # 6 s at 2/s: the 12 samples are the 12 centres, read once
    np.testing.assert_array_equal(ocr_sample_times(6.0, OcrSettings(), 12), segment_centres(6, 12))


# -- the share of windows holding a sample ---------------------------------------------------
def test_sampled_window_share_counts_windows_with_a_time_bounds_included():
    spans = (np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, 1.5, 2.5, 3.5]))
    assert sampled_window_share([0.5, 2.2], spans) == 0.5  # 0.5 sits on window 0's end
    assert sampled_window_share([3.0, 1.0, 0.0, 2.0], spans) == 1.0  # starts count; any order
    assert sampled_window_share([0.7, 1.7, 4.0], spans) == 0.0
    assert sampled_window_share([], spans) == 0.0
    assert math.isnan(sampled_window_share([1.0], (np.array([]), np.array([]))))


@pytest.mark.parametrize("xi", XIS)
def test_a_short_clip_at_2_fps_has_a_sample_in_every_window(xi):
    """5 s at 2 frames/s: without the centres the windows miss the 2/s samples at every xi
    here (3 of 12 at 0.2); with them every window holds its centre's."""
    duration, ocr, captions = 5.0, OcrSettings(fps=2.0), CaptionSettings(xi=xi)
    spans = window_spans(duration, captions)
    without = sampled_window_share(ocr_times(duration, ocr.fps, ocr.max_frames), spans)
    assert without < 1.0
    assert sampled_window_share(ocr_sample_times(duration, ocr, captions.frames), spans) == 1.0
    assert video_sample_share(duration, ocr, captions) == 1.0  # at the lines' millisecond
    assert math.isnan(video_sample_share(duration, KWAI, captions))  # kwai: times unknown


def test_the_share_before_the_centres_fell_with_the_window():
    ocr = OcrSettings(fps=2.0)
    fps_only = ocr_times(5.0, ocr.fps, ocr.max_frames)
    before = [
        sampled_window_share(fps_only, window_spans(5.0, CaptionSettings(xi=xi))) for xi in XIS
    ]
    assert before == [3 / 12, 4 / 12, 11 / 12]


# -- keys -----------------------------------------------------------------------------------
def test_t_keys_the_ocr_group_and_xi_does_not():
    keys = StageGroups.keys
    base = keys(PipelineSettings())
    other_t = keys(PipelineSettings(captions=CaptionSettings(frames=8)))
    other_xi = keys(PipelineSettings(captions=CaptionSettings(xi=0.2)))
    assert other_t["ocr"] != base["ocr"]
    assert {s for s in base if base[s] != other_t[s]} == {"ocr", "captions", "frames", "ocr_text"}
    assert {s for s in base if base[s] != other_xi[s]} == {"captions", "ocr_text"}
    # kwai imports OCR found elsewhere: T keys its captions, not its lines
    kwai = keys(PipelineSettings(ocr=KWAI))
    kwai_t = keys(PipelineSettings(ocr=KWAI, captions=CaptionSettings(frames=8)))
    assert kwai["ocr"] == kwai_t["ocr"] and kwai["captions"] != kwai_t["captions"]


# -- the stages -----------------------------------------------------------------------------
class SeesText:
    """A stand-in OCR engine that reads one line in every frame it is given."""

    def __init__(self, settings: OcrSettings, threads: int = 1):
        pass

    def __call__(self, frames: np.ndarray) -> list[list[tuple[str, float, list]]]:
        box = [[0.0, 0.0], [10.0, 0.0], [10.0, 5.0], [0.0, 5.0]]
        return [[("SIGN", 0.9, box)] for _ in frames]


@pytest.fixture
def decoding_work(synth_set, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.ocr, "make_engine", SeesText)
    return make_work(synth_set, tmp_path)


def test_the_stages_read_the_centres_and_report_the_share(decoding_work):
    work = decoding_work
    # fewer than T: the centres are read all the same (ungated: the engine sees every one)
    ocr = OcrSettings(max_frames=2, reuse="off")
    durations = work.manifest.videos.column("duration")
    for xi in XIS:
        captions = CaptionSettings(xi=xi)
        ocr_report = run_ocr(work, ocr, progress=False, captions=captions)
        report = run_captions(work, captions, ocr, progress=False)
        assert ocr_report.computed == (12 if xi == XIS[0] else 0)  # xi keys no OCR
        assert (report.computed, report.failed) == (12, 0)
        groups = StageGroups.resolve(work, PipelineSettings(ocr=ocr, captions=captions))
        for row, duration in enumerate(durations):
            times = {line["t"] for line in read_lines(groups.ocr, row)}
            centres = {line_time(t) for t in segment_centres(float(duration), 12)}
            assert centres <= times and len(times) <= 12
        # a text seen in every sampled frame reaches every window at every xi
        assert groups.captions.group["mask"][:].all()
        assert (groups.captions.group["sample_share"][:] == 1.0).all()
        assert window_sample_share(groups.captions) == 1.0
        assert report.figures == {"window_sample_share": 1.0}
        assert "window sample share 1.00" in str(report)
        assert "window sample share 1.00" in last_run(groups.captions.reports())

    # another T: the OCR is read again, at the new centres
    captions = CaptionSettings(frames=4)
    assert run_ocr(work, ocr, progress=False, captions=captions).computed == 12
    assert run_captions(work, captions, ocr, progress=False).figures["window_sample_share"] == 1


def test_run_ocr_takes_t_from_the_saved_settings_and_status_shows_the_share(decoding_work):
    work = decoding_work
    settings = PipelineSettings(captions=CaptionSettings(frames=6, xi=0.2))
    save_settings(work.path, settings)  # as `tcd caption --set captions.frames=6` leaves it
    assert run_ocr(work, settings.ocr, progress=False).computed == 12
    assert run_captions(work, settings.captions, settings.ocr, progress=False).computed == 12
    result = CliRunner().invoke(app, ["cache", "status", "--work", str(work.path)])
    assert result.exit_code == 0, result.output
    captions_row = next(r for r in result.output.splitlines() if r.startswith("* captions"))
    assert "window sample share 1.00" in captions_row
    assert WorkDir(work.path).find_stage("ocr", StageGroups.keys(settings)["ocr"]) is not None


def test_kwai_captions_have_no_share(synth_set, tmp_path):
    work = make_work(synth_set, tmp_path)
    run_ocr(work, KWAI, progress=False)
    report = run_captions(work, CaptionSettings(), KWAI, progress=False)
    assert report.computed == 12 and report.figures == {}
    group = StageGroups.resolve(work, PipelineSettings(ocr=KWAI, encode=EncodeSettings())).captions
    assert (group.group["sample_share"][:] == -1).all()  # unknown, never NaN: builds compare
    assert math.isnan(window_sample_share(group))
    assert "sample share" not in last_run(group.reports())
