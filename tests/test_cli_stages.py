"""The stage, data and cache commands: light imports, up-front refusals (an upstream not run,
typos, out-of-range settings, another dataset), the one-line summary with failures by type,
and `tcd cache status` with warnings and the last run's report."""

from __future__ import annotations

import json
import shlex
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cache import WorkDir
from cli.main import app
from pipeline.datasets import read_textvr
from pipeline.ocr import run_ocr
from pipeline.settings import WORK_SETTINGS, PipelineSettings, save_settings
from tests.conftest import run_python
from tests.test_stages import KWAI, make_work, write_truncated_video

runner = CliRunner()


def tcd(*args: str) -> tuple[int, list[str]]:
    """The real entry point in a fresh interpreter: (exit code, stderr lines)."""
    result = run_python("from cli.main import main; main()", *args, timeout=300)
    return result.returncode, result.stderr.strip().splitlines()


def test_light_modules_import_neither_torch_nor_transformers():
    modules = ["pipeline.settings", "heads.config", "cli.common", "cli.main"]
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_data_ocr_and_cache_status_import_neither_torch_nor_transformers(synth_set, tmp_path):
    """The light commands, each in a fresh process: reading a dataset, OCR (the Kwai import
    here, then a no-op rerun) and the cache status."""
    work = str(tmp_path / "w")
    code = (
        "import sys\nfrom cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    for command in (
        ["data", "textvr", "--root", str(synth_set), "--work", work, "-q"],
        ["ocr", "--work", work, "--engine", "kwai", "-q"],
        ["ocr", "--work", work, "-q"],
        ["cache", "status", "--work", work],
    ):
        result = run_python(code, *command)
        assert result.returncode == 0, result.stderr
        assert result.stdout.rstrip().endswith("[]"), (command, result.stdout[-300:])


def test_a_stage_before_its_upstream_is_refused_up_front(synth_set, tmp_path):
    work = make_work(synth_set, tmp_path)
    code, err = tcd("caption", "--work", str(work.path), "-q")
    assert code == 1 and len(err) == 1, err
    assert err[0] == (
        f"error: 12 video(s) have no OCR for these settings; run `tcd ocr --work {work.path}` first"
    )
    assert WorkDir(work.path).stages() == []  # nothing recorded, not even an empty group
    assert not (work.path / WORK_SETTINGS).exists()

    run_ocr(work, KWAI, progress=False)  # OCR only: no captions yet
    save_settings(work.path, PipelineSettings(ocr=KWAI))
    code, err = tcd("encode", "--work", str(work.path), "-q", "--workers", "0")
    assert code == 1 and len(err) == 1, err
    assert "12 video(s) have no window captions" in err[0] and "run `tcd caption --work" in err[0]
    groups = WorkDir(work.path).stages()
    assert [g.stage for g in groups] == ["ocr"]  # no frame was encoded before the refusal
    assert all(g.counts()["failed"] == 0 for g in groups)


def test_a_refused_stage_names_the_settings_its_upstream_must_run_with(synth_set, tmp_path):
    """`tcd caption --set ocr.engine=kwai` (or a T, which keys a sampling engine's OCR) was
    told to run `tcd ocr --work W`, which ran on the saved settings (rapidocr, minutes of it),
    and the caption command was refused again, round and round."""
    work = make_work(synth_set, tmp_path)
    caption = ["caption", "--work", str(work.path), "-q", "--set", "ocr.engine=kwai"]
    code, err = tcd(*caption, "--set", "captions.frames=6")
    assert code == 1 and len(err) == 1, err
    hint = err[0].split("run `", 1)[1].split("` first")[0]
    assert hint == (
        f"tcd ocr --work {work.path} --set 'ocr.engine=\"kwai\"' --set captions.frames=6"
    )
    code, err = tcd(*shlex.split(hint)[1:], "-q")  # what it says, as a shell would pass it
    assert code == 0, err
    code, err = tcd(*caption, "--set", "captions.frames=6")
    assert code == 0, err


def test_typos_in_choices_exit_2_before_any_work(synth_set, tmp_path):
    work = make_work(synth_set, tmp_path)
    for option, typo in (("--decoder", "decrod"), ("--engine", "kwia")):
        result = runner.invoke(app, ["ocr", "--work", str(work.path), "-q", option, typo])
        assert result.exit_code == 2 and typo in result.output, result.output
    assert WorkDir(work.path).stages() == []


def test_an_out_of_range_setting_is_refused_and_not_saved(synth_set, tmp_path):
    work = make_work(synth_set, tmp_path)
    save_settings(work.path, PipelineSettings(ocr=KWAI))
    saved = (work.path / WORK_SETTINGS).read_text()
    code, err = tcd("caption", "--work", str(work.path), "-q", "--set", "captions.xi=-1")
    settings_file = work.path / WORK_SETTINGS
    assert code == 1 and err == [
        f"error: captions.xi must be > 0, got -1.0 (settings from {settings_file}, "
        "--set captions.xi=-1)"
    ]
    assert settings_file.read_text() == saved
    assert WorkDir(work.path).stages() == []
    # a bad value already saved (older versions saved them) names the file it came from
    settings_file.write_text(saved.replace("xi = 1.0", "xi = -1.0"))
    code, err = tcd("cache", "status", "--work", str(work.path))
    assert code == 1 and err == [
        f"error: captions.xi must be > 0, got -1.0 (settings from {settings_file})"
    ], err


def test_reading_another_dataset_into_a_work_dir_needs_replace(synth_set, tmp_path):
    work = make_work(synth_set, tmp_path).path
    table = tmp_path / "caps.csv"
    first = read_textvr(synth_set).videos[0].id
    table.write_text(f"video,caption,split\n{first},a caption,test\n")
    folder = ["data", "folder", "--videos", str(synth_set / "Video"), "--captions", str(table)]
    code, err = tcd(*folder, "--work", str(work), "-q")
    assert code == 1 and len(err) == 1 and "pass --replace" in err[0], err
    assert f"holds 12 video(s) of dataset 'textvr' from {synth_set}" in err[0]
    assert WorkDir(work).status()["videos"]["present"] == 12  # untouched
    result = runner.invoke(app, [*folder, "--work", str(work), "-q", "--replace"])
    assert result.exit_code == 0 and "11 removed" in result.output, result.output
    assert WorkDir(work).manifest.attrs["dataset"] == "folder"
    # the same dataset again is an ordinary incremental update
    result = runner.invoke(app, [*folder, "--work", str(work), "-q"])
    assert result.exit_code == 0 and "0 removed" in result.output


def test_decord_without_the_package_is_refused_before_any_video(synth_set, tmp_path):
    work = make_work(synth_set, tmp_path)
    code = (
        "import sys; sys.modules['decord'] = None\n"  # as if decord were not installed
        "from cli.main import main; main()"
    )
    result = run_python(code, "ocr", "--work", str(work.path), "-q", "--decoder", "decord")
    err = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(err) == 1, err
    assert "--decoder decord needs the decord package" in err[0]
    assert WorkDir(work.path).stages() == []  # nothing recorded as failed


def test_the_same_files_under_a_moved_root_are_no_other_dataset(synth_set, tmp_path):
    """Moved files keep their ids; a different folder sharing only some names is refused."""
    work = make_work(synth_set, tmp_path).path
    moved = shutil.copytree(synth_set, tmp_path / "moved")
    code, err = tcd("data", "textvr", "--root", str(moved), "--work", str(work), "-q")
    assert code == 0 and err == [], err
    assert WorkDir(work).status()["videos"]["present"] == 12
    other = shutil.copytree(synth_set, tmp_path / "other")  # another set sharing one video
    shared = read_textvr(synth_set).videos[0].id
    for name in ("TextVR_train.json", "TextVR_test.json"):
        entries = json.loads((other / name).read_text())
        (other / name).write_text(json.dumps([e for e in entries if e["path"] == shared]))
    code, err = tcd("data", "textvr", "--root", str(other), "--work", str(work), "-q")
    assert code == 1 and "would mark 11 of them removed" in err[0], err


def test_stage_commands_and_strict(synth_copy, tmp_path):
    (synth_copy / "Video" / read_textvr(synth_copy).videos[2].id).write_bytes(b"")
    work = str(tmp_path / "w")
    assert (
        runner.invoke(
            app, ["data", "textvr", "--root", str(synth_copy), "--work", work, "-q"]
        ).exit_code
        == 0
    )
    result = runner.invoke(app, ["ocr", "--work", work, "--engine", "kwai", "-q"])
    assert result.exit_code == 0 and "11 computed, 1 failed" in result.output  # without --strict
    assert "frame rate is unknown" in result.output
    result = runner.invoke(app, ["caption", "--work", work, "-q", "--set", "captions.xi=0.5"])
    assert result.exit_code == 0 and "11 computed, 1 failed" in result.output  # kwai remembered
    assert "no OCR for this video" in result.output
    result = runner.invoke(app, ["encode", "--work", work, "-q", "--workers", "0", "--strict"])
    assert result.exit_code == 2 and "11 computed, 1 failed" in result.output
    assert "xi = 0.5" in (tmp_path / "w" / "settings.toml").read_text()
    result = runner.invoke(app, ["caption", "--work", work, "-q", "--set", "captions.xj=0.5"])
    assert result.exit_code == 1 and "unknown setting 'captions.xj'" in str(result.exception)


def test_summaries_count_failures_by_type_and_status_shows_runs_and_warnings(synth_copy, tmp_path):
    videos = read_textvr(synth_copy).videos
    for video in videos[:2]:
        video.ocr_path.write_text("{not json")
    videos[3].path.unlink()
    write_truncated_video(videos[3].path)  # opens, and its stream ends early
    work = str(make_work(synth_copy, tmp_path).path)
    result = runner.invoke(app, ["ocr", "--work", work, "--engine", "kwai", "-q"])
    assert result.exit_code == 0, result.output
    assert "10 computed, 2 failed" in result.output and "failed: 2 OcrError" in result.output
    assert "(setup " in result.output and " videos/s)" in result.output
    assert "not valid OCR JSON" in result.output  # one message of the type, as an example
    for command in (["caption"], ["encode", "--workers", "0"]):
        result = runner.invoke(app, [*command, "--work", work, "-q"])
        assert result.exit_code == 0, result.output
    assert "2 UpstreamError" in result.output and "1 with a warning" in result.output

    status = json.loads(runner.invoke(app, ["cache", "status", "--work", work, "--json"]).output)
    groups = {g["stage"]: g for g in status["stages"]}
    assert groups["frames"]["warnings"] == 1 and groups["ocr"]["warnings"] == 0
    ocr_run = groups["ocr"]["reports"]["all"]
    assert ocr_run["failures"] == {"OcrError": 2} and ocr_run["computed"] == 10
    assert {"read_s", "compute_s", "write_s", "items_per_s"} <= set(ocr_run)
    table = runner.invoke(app, ["cache", "status", "--work", work]).output
    assert "warned" in table and "last run" in table
    frames_line = next(line for line in table.splitlines() if "frames" in line)
    assert frames_line.split("videos")[1].split()[5] == "1"  # the warned column
    ocr_line = next(line for line in table.splitlines() if " ocr " in line)
    assert "12 in" in ocr_line and "2 OcrError" in ocr_line
    listed = runner.invoke(app, ["cache", "status", "--work", work, "--failed"]).output
    assert f"row 3 ({videos[3].id}): warning: " in listed and "truncated stream" in listed
    assert f"row 0 ({videos[0].id}): " in listed and "not valid OCR JSON" in listed
    ocr_key = groups["ocr"]["key"]
    assert f"ocr [{ocr_key}]: 2 failed (2 OcrError in the last run)" in listed


@pytest.mark.parametrize("command", [["data", "--help"], ["cache", "--help"], ["ocr", "--help"]])
def test_help_lists_the_choices(command):
    result = runner.invoke(app, command)
    assert result.exit_code == 0
    if command == ["ocr", "--help"]:
        assert "rapidocr" in result.output and "pyav" in result.output


def test_extract_equals_the_three_stages_and_a_rerun_loads_no_model(
    synth_set, tmp_path, monkeypatch
):
    """`tcd extract` writes bitwise what `ocr`, `caption` and `encode` write one by one; with
    nothing to do it loads no model (a model load would fail the rerun here)."""
    import pipeline.encode
    from tests.reliability.harness import cache_arrays
    from tests.test_stages import run_all

    staged = make_work(synth_set, tmp_path, "staged")
    run_all(staged)  # kwai OCR, captions, encode, by the library one stage at a time
    work = make_work(synth_set, tmp_path, "extracted").path
    command = ["extract", "--work", str(work), "--engine", "kwai", "--workers", "0", "-q"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert result.output.count(" computed, ") == 5  # ocr, captions, frames, ocr_text, queries
    extracted, reference = cache_arrays(work), cache_arrays(staged.path)
    assert extracted.keys() == reference.keys()
    for name, array in reference.items():
        assert np.array_equal(extracted[name], array), name

    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("a no-op extract loaded a model")

    monkeypatch.setattr(pipeline.encode, "load_text", no_model)
    monkeypatch.setattr(pipeline.encode, "load_vision", no_model)
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert result.output.count("nothing to do") == 5
    # in a fresh process, a no-op extract imports neither the stages' modules nor torch
    code = (
        "import sys\nfrom cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'pipeline.encode', 'pipeline.ocr', 'cv2') "
        "if m in sys.modules))"
    )
    fresh = run_python(code, *command)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.count("nothing to do") == 5 and fresh.stdout.rstrip().endswith("[]")


def test_a_video_gone_from_the_manifest_shows_removed_before_and_after_gc(synth_copy, tmp_path):
    """`tcd show` of a video that left the dataset: no work is due for it, so its stages read
    `removed`, not `pending`, also once `tcd cache gc` has cleared its rows."""
    from pipeline.manifest import build_manifest
    from pipeline.settings import OcrSettings

    work = make_work(synth_copy, tmp_path)
    run_ocr(work, KWAI, progress=False)
    save_settings(work.path, PipelineSettings(ocr=OcrSettings(engine="kwai")))
    tests = json.loads((synth_copy / "TextVR_test.json").read_text())
    gone = tests[0]["path"]
    (synth_copy / "TextVR_test.json").write_text(json.dumps(tests[1:]))
    build_manifest(work, read_textvr(synth_copy), progress=False)

    def ocr_state() -> str:
        result = runner.invoke(app, ["show", "--work", str(work.path), gone, "--json"])
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        assert shown["video"]["present"] is False
        return shown["stages"]["ocr"]["state"]

    assert ocr_state() == "removed"  # its row still written (its row states say so)
    result = runner.invoke(app, ["cache", "gc", "--work", str(work.path)])
    assert result.exit_code == 0 and "cleared 1 row(s)" in result.output, result.output
    assert ocr_state() == "removed"  # its row cleared: no row state; the manifest says so
