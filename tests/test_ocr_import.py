"""OCR brought from any spotter (issue 18): the `import` engine and its formats (JSON Lines,
BOVText, ICDAR video XML, Kwai), where each video's file is, row keys that follow the files,
and an imported work dir through caption -> encode -> train -> eval."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cache import WorkDir
from cli.main import app
from pipeline.datasets import read_folder, read_textvr
from pipeline.manifest import build_manifest
from pipeline.ocr import OcrError, read_kwai_ocr, read_lines, run_ocr
from pipeline.ocr_import import (
    annotation_paths,
    read_bovtext_ocr,
    read_icdar_ocr,
    read_imported_ocr,
    read_jsonl_ocr,
)
from pipeline.settings import (
    CaptionSettings,
    OcrSettings,
    PipelineSettings,
    StageGroups,
    samples_frames,
    save_settings,
)
from tests.test_msrvtt import msrvtt_root
from tests.test_stages import KWAI, assert_refused_naming_file, make_work, run_all

# The ocr group keys before issue 18 (computed on the code before the import engine existed):
# kwai work dirs, the Makefile's OCR_ENGINE=kwai and saved settings keep their caches.
KWAI_OCR_KEY = "659d88cf19dbba21"
RAPIDOCR_OCR_KEY = "5d69226db081e443"
BOX = [[10, 20], [90, 20], [90, 40], [10, 40]]

# The README's ten-line example (work/notes/import_readme.md)
JSONL_EXAMPLE = """\
{"t": 0.0, "text": "TESCO express", "score": 0.97, "box": [[12,30],[180,30],[180,62],[12,62]]}
{"t": 0.0, "text": "OPEN 24H", "score": 0.88, "box": [[200,40],[260,40],[260,58],[200,58]]}
{"t": 0.5, "text": "TESCO express", "score": 0.95, "box": [[14,31],[182,31],[182,63],[14,63]]}
{"t": 0.5, "text": "fresh vegetables"}
{"t": 1.0, "text": "fresh vegetables", "score": 0.91}
{"t": 1.5, "text": "Jason Kenny", "score": 0.99, "box": [[40,300],[220,300],[220,330],[40,330]]}
{"t": 2.0, "text": "GOLD", "score": 0.93, "box": [[40,340],[100,340],[100,362],[40,362]]}
{"t": 2.5, "text": "Jason Kenny", "score": 0.98}
{"t": 3.0, "text": "CYCLING", "score": 0.64, "box": [[300,20],[380,20],[380,40],[300,40]]}
{"t": 3.5, "text": "GB", "score": 0.42}
"""


# -- keys and settings ------------------------------------------------------------------------
def test_kwai_keeps_its_ocr_group_key_and_import_engines_decode_nothing():
    kwai = PipelineSettings(ocr=KWAI)
    assert StageGroups.keys(kwai)["ocr"] == KWAI_OCR_KEY
    other_t = PipelineSettings(ocr=KWAI, captions=CaptionSettings(frames=8))
    assert StageGroups.keys(other_t)["ocr"] == KWAI_OCR_KEY  # T keys no imported OCR
    # the ungated rapidocr group (the default before the gate) keeps its key; the default
    # gate keys its own
    ungated = PipelineSettings(ocr=OcrSettings(reuse="off"))
    assert StageGroups.keys(ungated)["ocr"] == RAPIDOCR_OCR_KEY
    assert StageGroups.keys(PipelineSettings())["ocr"] != RAPIDOCR_OCR_KEY
    imported = OcrSettings(engine="import", import_dir="/ocr")
    keys = StageGroups.keys(PipelineSettings(ocr=imported))
    assert keys["ocr"] not in (KWAI_OCR_KEY, RAPIDOCR_OCR_KEY)
    # what reads no frames is not keyed by frame sampling; where the files are keys it
    for same in (
        PipelineSettings(ocr=OcrSettings(engine="import", import_dir="/ocr", fps=5.0)),
        PipelineSettings(ocr=imported, captions=CaptionSettings(frames=8)),
    ):
        assert StageGroups.keys(same)["ocr"] == keys["ocr"]
    for other in (
        OcrSettings(engine="import", import_dir="/ocr2"),
        OcrSettings(engine="import", import_dir="/ocr", import_format="bovtext"),
        OcrSettings(engine="import", import_dir="/ocr", import_map="map.csv"),
    ):
        assert StageGroups.keys(PipelineSettings(ocr=other))["ocr"] != keys["ocr"]
    assert not samples_frames(imported) and not samples_frames(KWAI)
    assert samples_frames(OcrSettings())


# -- the readers ------------------------------------------------------------------------------
def test_jsonl_reader_and_the_readme_example(tmp_path):
    path = tmp_path / "clip.jsonl"
    path.write_text(JSONL_EXAMPLE + "\n   \n")
    lines = read_jsonl_ocr(path)
    assert len(lines) == 10 and [x["t"] for x in lines] == sorted(x["t"] for x in lines)
    assert lines[0] == {
        "text": "TESCO express",
        "score": 0.97,
        "box": [[12.0, 30.0], [180.0, 30.0], [180.0, 62.0], [12.0, 62.0]],
        "t": 0.0,
        "track": -1,
    }
    fresh = lines[3]
    assert fresh["text"] == "fresh vegetables" and fresh["score"] == 1.0  # score optional
    assert fresh["box"] == [[0.0, 0.0]] * 4  # box optional
    assert read_imported_ocr(path, 0.0, "jsonl") == lines
    assert read_jsonl_ocr(tmp_path / "missing.jsonl") == []
    # json.dumps(..., ensure_ascii=False) leaves U+2028 unescaped: no line ends there
    separated = tmp_path / "separated.jsonl"
    separated.write_text(json.dumps({"t": 1, "text": "SALE\u2028TODAY"}, ensure_ascii=False))
    assert [x["text"] for x in read_jsonl_ocr(separated)] == ["SALE\u2028TODAY"]
    cases = [
        ('{"t": 1, "text": "a"}\n{"t": 1, "text": ', "line 2: not valid JSON"),
        ('["t", 1]', "line 1: expected an object"),
        ('{"text": "a"}', "line 1: 't' must be a time"),
        ('{"t": -1, "text": "a"}', "line 1: 't' must be a time"),
        ('{"t": 1}', "line 1: missing string 'text'"),
        ('\n\n{"t": 1, "text": "a", "score": 2}', "line 3: 'score' must be a number in"),
        ('{"t": 1, "text": "a", "score": true}', "line 1: 'score' must be a number in"),
        ('{"t": 1, "text": "a", "box": [[1, 2]]}', "line 1: 'box' must be 4"),
        ('{"t": 1, "text": "a", "track": "x"}', "line 1: 'track' must be an integer"),
    ]
    assert_refused_naming_file(path, read_jsonl_ocr, cases)
    path.write_bytes(b'{"t": 1, "text": "\xff"}')
    with pytest.raises(OcrError, match="not UTF-8"):
        read_jsonl_ocr(path)


def test_bovtext_reader_accepts_both_frame_keys_and_drops_illegible_text(tmp_path):
    path = tmp_path / "gt_video_3.json"
    points = [10, 20, 90, 20, 90, 40, 10, 40]
    entry = {"points": points, "tracking ID": "7", "transcription": "SALE", "category": "scene"}
    data = {
        "frame_1": [entry, {**entry, "tracking ID": "8", "transcription": "###"}],
        "11": [{**entry, "tracking ID": 9, "transcription": "caption text", "category": "title"}],
        "frame_6": [entry],
        "frame_2": [],
    }
    path.write_text(json.dumps(data))
    lines = read_bovtext_ocr(path, fps=10.0)
    assert [(x["text"], x["t"], x["track"], x["score"]) for x in lines] == [
        ("SALE", 0.0, 0, 1.0),  # frame 1 is the first frame: t = 0
        ("SALE", 0.5, 0, 1.0),
        ("caption text", 1.0, 1, 1.0),
    ]
    assert lines[0]["box"] == BOX
    assert read_bovtext_ocr(tmp_path / "none.json", 10.0) == []
    cases = [
        ("{bad", r"not valid OCR JSON \(line 1"),
        ("[]", "expected an object of frames"),
        ('{"frame_x": []}', "frame 'frame_x': expected a key like"),
        ('{"0": []}', "frame numbers start at 1"),
        ('{"1": {}}', "frame '1': expected a list"),
        ('{"1": [{"points": [1], "tracking ID": 1, "transcription": "a"}]}', "entry 0: 'points'"),
        ('{"1": [{"points": [1,2,3,4,5,6,7,8], "tracking ID": 1}]}', "'transcription'"),
        ('{"1": [1]}', "frame '1' entry 0: expected an object"),
        (
            '{"1": [{"points": [1,2,3,4,5,6,7,8], "tracking ID": [], "transcription": "a"}]}',
            "'tracking ID' must be",
        ),
    ]
    assert_refused_naming_file(path, lambda p: read_bovtext_ocr(p, 10.0), cases)
    path.write_text("{}")
    with pytest.raises(OcrError, match="frame rate is unknown"):
        read_bovtext_ocr(path, 0.0)


ICDAR = """<?xml version="1.0" encoding="us-ascii"?>
<Frames>
  <frame ID="1" />
  <frame ID="3">
    <object Transcription="Alcampo" ID="1001" Language="Spanish" Quality="MODERATE">
      <Point x="10" y="20" />
      <Point x="90" y="20" />
      <Point x="90" y="40" />
      <Point x="10" y="40" />
    </object>
    <object Transcription="##DONT#CARE##" ID="1002" Language="Spanish" Quality="LOW">
      <Point x="1" y="2" /><Point x="3" y="2" /><Point x="3" y="4" /><Point x="1" y="4" />
    </object>
  </frame>
  <frame ID="5">
    <object Transcription="Alcampo" ID="1001" Language="Spanish" Quality="HIGH">
      <Point x="10" y="20" /><Point x="90" y="20" /><Point x="90" y="40" /><Point x="10" y="40" />
    </object>
  </frame>
</Frames>
"""


def test_icdar_reader_takes_times_from_the_frame_rate_and_errors_name_the_line(tmp_path):
    path = tmp_path / "Video_1_1_2_GT.xml"
    path.write_text(ICDAR)
    lines = read_icdar_ocr(path, fps=4.0)
    assert [(x["text"], x["t"], x["track"]) for x in lines] == [
        ("Alcampo", 0.5, 0),
        ("Alcampo", 1.0, 0),
    ]
    assert lines[0]["box"] == BOX and lines[0]["score"] == 1.0
    path.write_bytes(
        ICDAR.replace("Alcampo", "Caf\xe9").encode("latin-1").replace(b"us-ascii", b"iso-8859-1")
    )
    assert read_icdar_ocr(path, 4.0)[0]["text"] == "Caf\u00e9"  # the declared encoding
    broken_point = ICDAR.replace('<Point x="90" y="40" />\n', '<Point x="90" y="x" />\n', 1)
    cases = [
        (ICDAR.replace("</Frames>", ""), "line 21: not valid XML"),
        (ICDAR.replace('ID="3"', 'ID="three"'), "line 4: <frame> needs an integer ID"),
        (ICDAR.replace('ID="3"', 'ID="0"'), "frame numbers start at 1"),
        (broken_point, "line 8: <Point> needs numbers x and y"),
        (ICDAR.replace('      <Point x="10" y="40" />\n', "", 1), "line 5: <object> needs 4"),
        (ICDAR.replace(' Transcription="Alcampo" ID="1001"', "", 1), "line 5: <object> needs a"),
        ('<!DOCTYPE x [<!ENTITY a "aaaa">]><Frames/>', "line 1: a DTD is not accepted"),
        ('<Frames><object Transcription="a"/></Frames>', "line 1: an <object> outside"),
    ]
    assert_refused_naming_file(path, lambda p: read_icdar_ocr(p, 4.0), cases)


def test_kwai_is_one_of_the_import_formats(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"9": {"text": "SIAM", "score": 0.9, "tracks": {"30": [0] * 8}}}))
    assert read_imported_ocr(path, 30.0, "kwai") == read_kwai_ocr(path, 30.0)
    assert read_imported_ocr(path, 30.0, "kwai")[0]["t"] == 1.0  # Kwai counts frames from 0
    with pytest.raises(OcrError, match="unknown OCR import format"):
        read_imported_ocr(path, 30.0, "srt")


# -- where the files are ----------------------------------------------------------------------
def kwai_lines(synth: Path, video_id: str) -> list[dict]:
    """The synthetic set's ground-truth OCR of one video (10 fps), as lines."""
    return read_kwai_ocr(synth / "Kwai_VideoOCR" / Path(video_id).with_suffix(".json"), 10.0)


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_files_are_found_under_the_import_dir_by_name_or_through_the_map(synth_copy, tmp_path):
    work = make_work(synth_copy, tmp_path)
    ids = [str(i) for i in work.manifest.videos.column("id")]
    ocr = tmp_path / "ocr"
    mirrored = write_jsonl(ocr / Path(ids[0]).with_suffix(".jsonl"), [])
    flat = write_jsonl(ocr / Path(ids[1]).with_suffix(".jsonl").name, [])
    settings = OcrSettings(engine="import", import_dir=str(ocr))
    paths = annotation_paths(settings, work)
    assert paths[0] == mirrored and paths[1] == flat
    assert paths[2] == ocr / Path(ids[2]).with_suffix(".jsonl")  # not there: no text
    # no import dir: next to the video; relative dirs are relative to the dataset root
    beside = annotation_paths(OcrSettings(engine="import"), work)
    assert beside[0] == synth_copy / "Video" / Path(ids[0]).with_suffix(".jsonl")
    (synth_copy / "theirs").mkdir()
    relative = annotation_paths(OcrSettings(engine="import", import_dir="theirs"), work)
    assert relative[0] == synth_copy / "theirs" / Path(ids[0]).with_suffix(".jsonl")
    # BOVText's and ICDAR's own names
    stem = Path(ids[3]).stem
    bov = write_jsonl(ocr / f"gt_{stem}.json", [])
    icdar = write_jsonl(ocr / Path(ids[3]).parent / f"{stem}_GT.xml", [])
    for fmt, expected in (("bovtext", bov), ("icdar", icdar)):
        found = annotation_paths(
            OcrSettings(engine="import", import_format=fmt, import_dir=str(ocr)), work
        )
        assert found[3] == expected
    # kwai without a dir: TextVR's Kwai_OCR paths
    assert annotation_paths(KWAI, work)[0] == synth_copy / "Kwai_VideoOCR" / Path(
        ids[0]
    ).with_suffix(".json")
    # the map table wins; header optional; files relative to the import dir
    table = tmp_path / "map.tsv"
    table.write_text(f"video\tannotation\n{ids[0]}\tany/name.jsonl\n{Path(ids[1]).stem}\tb.jsonl\n")
    mapped = OcrSettings(engine="import", import_dir=str(ocr), import_map=str(table))
    paths = annotation_paths(mapped, work)
    assert paths[0] == ocr / "any" / "name.jsonl" and paths[1] == ocr / "b.jsonl"
    assert paths[2] == ocr / Path(ids[2]).with_suffix(".jsonl")  # not in the table: its name
    for content, message in [
        (f"{ids[0]},../../etc/passwd\n", "line 1: .* leads outside"),
        (f"video,file\n{ids[0]},a.jsonl,extra\n", "line 2: expected two columns"),
    ]:
        table = tmp_path / "map.csv"
        table.write_text(content)
        bad = OcrSettings(engine="import", import_dir=str(ocr), import_map=str(table))
        with pytest.raises(OcrError, match=message):
            annotation_paths(bad, work)
    with pytest.raises(OcrError, match="import_map table is not found"):
        annotation_paths(OcrSettings(engine="import", import_map="nowhere.csv"), work)


# -- row keys follow the files ----------------------------------------------------------------
def computed(reports) -> dict[str, int]:
    return {r.stage: r.computed for r in reports}


ONE_VIDEO = {"ocr": 1, "captions": 1, "frames": 0, "ocr_text": 1, "queries": 0}
NOTHING = dict.fromkeys(ONE_VIDEO, 0)


def test_adding_or_editing_an_import_file_recomputes_that_video_only(synth_copy, tmp_path):
    work = make_work(synth_copy, tmp_path)
    ids = [str(i) for i in work.manifest.videos.column("id")]
    ocr = tmp_path / "ocr"
    for video_id in ids[1:]:  # the first video has no file yet
        write_jsonl(ocr / Path(video_id).with_suffix(".jsonl"), kwai_lines(synth_copy, video_id))
    settings = OcrSettings(engine="import", import_dir=str(ocr))
    reports = run_all(work, ocr=settings)
    assert [(r.stage, r.computed, r.failed) for r in reports[:2]] == [
        ("ocr", 12, 0),
        ("captions", 12, 0),
    ]
    group = StageGroups.resolve(work, PipelineSettings(ocr=settings)).ocr
    assert read_lines(group, 0) == []  # a missing file: no text, done
    assert read_lines(group, 1) == kwai_lines(synth_copy, ids[1])
    assert computed(run_all(work, ocr=settings)) == NOTHING

    first = write_jsonl(ocr / Path(ids[0]).with_suffix(".jsonl"), kwai_lines(synth_copy, ids[0]))
    assert computed(run_all(work, ocr=settings)) == ONE_VIDEO  # added: picked up
    assert read_lines(StageGroups.resolve(work, PipelineSettings(ocr=settings)).ocr, 0)
    captions = StageGroups.resolve(work, PipelineSettings(ocr=settings)).captions
    assert any(str(c) for c in captions.group["captions"][0])  # the new text reached captions

    with first.open("a") as f:  # edited
        f.write(json.dumps({"t": 0.1, "text": "LATE ADDITION", "score": 0.9}) + "\n")
    assert computed(run_all(work, ocr=settings)) == ONE_VIDEO
    captions = StageGroups.resolve(work, PipelineSettings(ocr=settings)).captions
    assert "LATE ADDITION" in " ".join(str(c) for c in captions.group["captions"][0])
    stat = first.stat()  # same size, same mtime, other bytes: the hash sees it
    first.write_text(first.read_text().replace("LATE ADDITION", "LATE ADDITIOM"))
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert computed(run_all(work, ocr=settings)) == ONE_VIDEO
    first.unlink()  # removed: no text again
    assert computed(run_all(work, ocr=settings)) == ONE_VIDEO
    assert computed(run_all(work, ocr=settings)) == NOTHING

    # `tcd cache status` opens every group without its file keys: done rows stay done
    status = {(g["stage"], g["key"]): g for g in WorkDir(work.path).status()["stages"]}
    ocr_status = status[("ocr", group.key)]
    assert (ocr_status["done"], ocr_status["stale"]) == (12, 0)
    # ... while the CLI checks the current settings' groups with them: an edit shows as stale
    save_settings(work.path, PipelineSettings(ocr=settings))
    write_jsonl(ocr / Path(ids[3]).with_suffix(".jsonl"), [{"t": 0.2, "text": "NEW SIGN"}])
    shown = CliRunner().invoke(app, ["cache", "status", "--work", str(work.path), "--json"])
    groups = {(g["stage"], g["key"]): g for g in json.loads(shown.output)["stages"]}
    assert (groups[("ocr", group.key)]["done"], groups[("ocr", group.key)]["stale"]) == (11, 1)
    assert computed(run_all(work, ocr=settings)) == ONE_VIDEO

    # a malformed file fails its video alone, naming the file and line
    write_jsonl(ocr / Path(ids[2]).with_suffix(".jsonl"), []).write_text('{"t": 1}\n')
    reports = run_all(work, ocr=settings)
    assert (reports[0].computed, reports[0].failed) == (0, 1)
    assert "line 1: missing string 'text'" in reports[0].errors[0]
    assert str(ocr / Path(ids[2]).with_suffix(".jsonl")) in reports[0].errors[0]


def test_kwai_picks_up_a_file_that_appears_later(synth_copy, tmp_path):
    videos = read_textvr(synth_copy).videos
    held = tmp_path / "held.json"
    shutil.move(videos[4].ocr_path, held)
    work = make_work(synth_copy, tmp_path)
    run_all(work)  # KWAI
    group = StageGroups.resolve(work, PipelineSettings(ocr=KWAI)).ocr
    assert group.key == KWAI_OCR_KEY and read_lines(group, 4) == []
    shutil.move(held, videos[4].ocr_path)
    assert computed(run_all(work)) == ONE_VIDEO  # today's bug: a later file was never read
    assert read_lines(StageGroups.resolve(work, PipelineSettings(ocr=KWAI)).ocr, 4)


def test_a_map_table_feeds_bovtext_files_and_a_remap_recomputes(synth_copy, tmp_path):
    work = make_work(synth_copy, tmp_path)
    ids = [str(i) for i in work.manifest.videos.column("id")]
    ocr = tmp_path / "bovtext"
    ocr.mkdir()
    rows = []
    for n, video_id in enumerate(ids):
        frames: dict[str, list] = {}
        for line in kwai_lines(synth_copy, video_id):
            points = [v for point in line["box"] for v in point]
            entry = {
                "points": points,
                "tracking ID": str(line["track"]),
                "transcription": line["text"],
                "category": "scene",
            }
            frames.setdefault(f"frame_{round(line['t'] * 10) + 1}", []).append(entry)
        (ocr / f"gt_video_{n}.json").write_text(json.dumps(frames))
        rows.append(f"{video_id},gt_video_{n}.json")
    table = ocr / "map.csv"
    table.write_text("\n".join(rows) + "\n")
    settings = OcrSettings(
        engine="import", import_format="bovtext", import_dir=str(ocr), import_map=str(table)
    )
    reports = run_all(work, ocr=settings)
    assert (reports[0].computed, reports[0].failed) == (12, 0)
    group = StageGroups.resolve(work, PipelineSettings(ocr=settings)).ocr
    ours = [(x["text"], x["t"]) for x in read_lines(group, 5)]
    assert ours == [(x["text"], x["t"]) for x in kwai_lines(synth_copy, ids[5])]
    # video 5 now maps to video 6's file: it alone is recomputed
    table.write_text(
        table.read_text().replace(f"{ids[5]},gt_video_5.json", f"{ids[5]},gt_video_6.json")
    )
    assert computed(run_all(work, ocr=settings)) == ONE_VIDEO
    # the map moved away: status and show report (each stopped on the map) and warn
    from pipeline.settings import save_settings

    save_settings(work.path, PipelineSettings(ocr=settings))
    table.rename(tmp_path / "moved.csv")
    runner = CliRunner()
    result = runner.invoke(app, ["cache", "status", "--work", str(work.path)])
    assert result.exit_code == 0, result.output
    assert "map.csv: the ocr.import_map table is not found" in result.stderr
    assert "rows are checked against their videos alone" in result.stderr
    result = runner.invoke(app, ["show", "--work", str(work.path), ids[5], "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["stages"]["ocr"]["state"] == "done"


# -- an imported work dir through every stage -------------------------------------------------
def test_msrvtt_with_imported_ocr_goes_through_caption_encode_train_eval(synth_set, tmp_path):
    root = msrvtt_root(synth_set, tmp_path)
    sources = sorted((synth_set / "Video").rglob("*.mp4"))
    ocr = tmp_path / "spotter"
    for n, source in enumerate(sources[:7]):
        rel = source.relative_to(synth_set / "Video").as_posix()
        write_jsonl(ocr / f"video{n}.jsonl", kwai_lines(synth_set, rel))
    w = str(tmp_path / "work")
    runner = CliRunner()

    def tcd(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, f"{args}: {result.output} {result.exception!r}"
        return result.output

    tcd("data", "msrvtt", "--root", str(root), "--work", w, "-q")
    out = tcd("ocr", "--work", w, "--engine", "import", "--set", f"ocr.import_dir={ocr}", "-q")
    assert "7 computed, 0 failed" in out
    assert "7 computed, 0 failed" in tcd("caption", "--work", w, "-q")  # the saved settings
    tcd("encode", "--work", w, "--workers", "0", "-q")
    train = [
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.val_fraction=0.25",
    ]
    tcd("train", "--work", w, "--config", "configs/tcd.toml", "--name", "imp", *train)
    report = json.loads(tcd("eval", "--work", w, "--run", "imp", "--split", "test", "--json"))
    assert (report["captions"], report["videos"]) == (3, 3)  # 1k-A: one sentence per video
    assert set(report["t2v"]) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
    ocr_text = StageGroups.resolve(
        WorkDir(w), PipelineSettings(ocr=OcrSettings(engine="import", import_dir=str(ocr)))
    ).ocr_text
    assert ocr_text.counts()["done"] == 7
    assert np.asarray(ocr_text.group["mask"][:]).any()  # the imported text was encoded


def test_a_file_named_only_by_a_shared_name_is_no_video_s_and_kwai_follows_its_ocr_path(tmp_path):
    """Two videos named clip.mp4 in two folders: a file at the import dir's top, or a map row
    naming `clip.mp4`, belongs to neither (it went to both); TextVR's Kwai_OCR path, which
    may name another folder than the video's, is followed under an import dir too."""
    from pipeline.manifest import build_manifest
    from tests.test_datasets import entry, write_textvr

    test = [
        entry("Sports/clip.mp4", "a"),
        entry("Games/clip.mp4", "b"),
        entry("News_Movie/n.mp4", "c", ocr="Movie/n.json"),
    ]
    root = write_textvr(tmp_path / "tv", test=test)
    work = WorkDir(tmp_path / "w", create=True)
    build_manifest(work, read_textvr(root), progress=False)
    ocr = tmp_path / "ocr"
    write_jsonl(ocr / "clip.jsonl", [])  # whose?
    paths = annotation_paths(OcrSettings(engine="import", import_dir=str(ocr)), work)
    assert paths[:2] == [ocr / "Sports" / "clip.jsonl", ocr / "Games" / "clip.jsonl"]
    table = tmp_path / "map.csv"
    table.write_text("clip.mp4,clip.jsonl\n")
    mapped = OcrSettings(engine="import", import_dir=str(ocr), import_map=str(table))
    with pytest.raises(OcrError, match="'clip.mp4', which 2 videos' files share"):
        annotation_paths(mapped, work)
    table.write_text("Sports/clip.mp4,clip.jsonl\n")  # by id: fine
    assert annotation_paths(mapped, work)[0] == ocr / "clip.jsonl"
    (tmp_path / "kwai_copy").mkdir()
    kwai = OcrSettings(
        engine="import", import_format="kwai", import_dir=str(tmp_path / "kwai_copy")
    )
    assert annotation_paths(kwai, work)[2] == tmp_path / "kwai_copy" / "Movie" / "n.json"
    assert annotation_paths(KWAI, work)[2] == root.resolve() / "Kwai_VideoOCR" / "Movie" / "n.json"
    # the kwai engine reads no import_dir (nor is keyed by one): one left by an import is
    # not looked at
    leftover = replace(KWAI, import_dir=str(tmp_path / "kwai_copy"))
    assert annotation_paths(leftover, work) == annotation_paths(KWAI, work)


def test_videos_of_one_folder_sharing_a_stem_are_named_by_their_whole_file_names(tmp_path):
    """Sports/clip.mp4 and Sports/clip.mov (other content) both read Sports/clip.jsonl, and a
    map row naming Sports/clip went to both."""
    from pipeline.manifest import build_manifest
    from tests.test_datasets import entry, write_textvr

    test = [entry("Sports/clip.mp4", "a"), entry("Sports/clip.mov", "b"), entry("x.mp4", "c")]
    root = write_textvr(tmp_path / "tv", test=test)
    work = WorkDir(tmp_path / "w", create=True)
    build_manifest(work, read_textvr(root), progress=False)
    ocr = tmp_path / "ocr"
    write_jsonl(ocr / "Sports" / "clip.jsonl", [])  # whose? neither's
    paths = annotation_paths(OcrSettings(engine="import", import_dir=str(ocr)), work)
    assert paths == [
        ocr / "Sports" / "clip.mp4.jsonl", ocr / "Sports" / "clip.mov.jsonl", ocr / "x.jsonl"
    ]  # fmt: skip
    beside = annotation_paths(OcrSettings(engine="import"), work)  # next to each video
    assert [p.name for p in beside] == ["clip.mp4.jsonl", "clip.mov.jsonl", "x.jsonl"]
    table = tmp_path / "map.csv"
    table.write_text("Sports/clip,clip.jsonl\n")
    mapped = OcrSettings(engine="import", import_dir=str(ocr), import_map=str(table))
    with pytest.raises(OcrError, match="names 'Sports/clip', which 2 videos share"):
        annotation_paths(mapped, work)
    table.write_text("Sports/clip.mov,clip.jsonl\n")  # by id: fine
    assert annotation_paths(mapped, work)[1] == ocr / "clip.jsonl"


def test_an_import_that_finds_no_file_is_refused_and_a_video_without_one_is_warned(
    synth_copy, tmp_path
):
    """A mistyped import folder, or kwai on a dataset without Kwai_OCR, stored every video
    as without scene text and said nothing."""
    work = make_work(synth_copy, tmp_path)
    ids = [str(i) for i in work.manifest.videos.column("id")]
    with pytest.raises(OcrError, match="nowhere: the ocr.import_dir folder is not found"):
        run_ocr(work, OcrSettings(engine="import", import_dir=str(tmp_path / "nowhere")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OcrError, match=f"no OCR file found for any of the {len(ids)} videos"):
        run_ocr(work, OcrSettings(engine="import", import_dir=str(empty)))
    folder = WorkDir(tmp_path / "folder", create=True)
    build_manifest(folder, read_folder(synth_copy / "Video"), progress=False)
    with pytest.raises(OcrError, match="the dataset names no Kwai_OCR file"):
        run_ocr(folder, KWAI)
    write_jsonl(empty / Path(ids[0]).with_suffix(".jsonl"), kwai_lines(synth_copy, ids[0]))
    # times in milliseconds: every line after the video's end, in no window (said nothing)
    in_ms = [{**line, "t": 1000 * line["t"]} for line in kwai_lines(synth_copy, ids[1])]
    write_jsonl(empty / Path(ids[1]).with_suffix(".jsonl"), in_ms)
    report = run_ocr(work, OcrSettings(engine="import", import_dir=str(empty)), progress=False)
    assert (report.computed, report.failed) == (len(ids), 0)
    group = StageGroups.resolve(
        work, PipelineSettings(ocr=OcrSettings(engine="import", import_dir=str(empty)))
    ).ocr
    warnings = [str(w) for w in group.group["warning"][:]]
    assert warnings[0] == "" and all(w.startswith("no OCR file (") for w in warnings[2:])
    late = sum(line["t"] > 1 for line in in_ms)  # (the first line may be at 0 s)
    assert warnings[1].startswith(f"{late} of {len(in_ms)} OCR lines lie after the video's end")


def test_half_an_emoji_in_an_imported_file_is_replaced_not_fatal(synth_copy, tmp_path):
    """A JSON escape of half a surrogate pair is valid JSON but no UTF-8 text: the line is
    imported with '?' in its place, and the stage writes every row."""
    work = make_work(synth_copy, tmp_path)
    ids = [str(i) for i in work.manifest.videos.column("id")]
    ocr = tmp_path / "ocr"
    path = ocr / Path(ids[0]).with_suffix(".jsonl")
    path.parent.mkdir(parents=True)
    path.write_text('{"t": 0.5, "text": "emoji half \\ud83d"}\n')
    settings = OcrSettings(engine="import", import_dir=str(ocr))
    report = run_ocr(work, settings, progress=False)
    assert (report.computed, report.failed) == (12, 0)
    group = StageGroups.resolve(work, PipelineSettings(ocr=settings)).ocr
    assert [line["text"] for line in read_lines(group, 0)] == ["emoji half ?"]


def test_a_video_whose_probe_failed_is_redone_once_a_probe_succeeds(synth_copy, tmp_path):
    """An imported OCR reads no video, so its captions were built on a duration of 0 (every
    window empty) and kept as done; the frames failed for good: a later probe that succeeds
    keeps the video's key (its file's content), so nothing was computed again."""
    import pipeline.manifest
    from pipeline.errors import VideoError

    dataset = read_textvr(synth_copy)
    first = dataset.videos[0]
    probe = pipeline.manifest.probe

    def flaky(path: Path):
        if Path(path) == first.path:
            raise VideoError(f"{path}: no decoder could open it")
        return probe(path)

    work = WorkDir(tmp_path / "work", create=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline.manifest, "probe", flaky)
        build_manifest(work, dataset, progress=False)
    ids = [str(i) for i in work.manifest.videos.column("id")]
    ocr = tmp_path / "ocr"
    for video_id in ids:
        write_jsonl(ocr / Path(video_id).with_suffix(".jsonl"), kwai_lines(synth_copy, video_id))
    settings = OcrSettings(engine="import", import_dir=str(ocr))
    reports = run_all(work, ocr=settings)
    assert {r.stage: r.failed for r in reports}["captions"] == 1
    assert {r.stage: r.failed for r in reports}["frames"] == 1
    build_manifest(work, read_textvr(synth_copy), progress=False)  # probed again: readable
    assert computed(run_all(work, ocr=settings)) == {**ONE_VIDEO, "ocr": 0, "frames": 1}
    captions = StageGroups.resolve(work, PipelineSettings(ocr=settings)).captions
    row = ids.index(first.id)
    assert any(str(c) for c in captions.group["captions"][row])  # its text is in its windows
