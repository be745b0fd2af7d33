"""The MSR-VTT reader (issue 18): CLIP4Clip's layout, the 1k-A and full splits, clear errors.

The annotation files are hand-written fixtures (tests/fixtures/msrvtt/) with exactly the
fields of the real ones; the videos are copies of the session's synthetic videos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cache import WorkDir
from cli.main import app
from pipeline.datasets import read_msrvtt
from pipeline.errors import DatasetError

FIXTURE = Path(__file__).parent / "fixtures" / "msrvtt"
VIDEO_IDS = [f"video{i}" for i in range(7)]


def msrvtt_root(
    synth_set: Path, where: Path, video_dir: str = "MSRVTT_Videos", data_dir: str = ""
) -> Path:
    """An MSR-VTT folder: the fixture's annotation files (in `data_dir` under the root) and
    one synthetic video per video id under `video_dir`."""
    root = where / "msrvtt"
    (root / data_dir).mkdir(parents=True, exist_ok=True)
    for path in FIXTURE.iterdir():
        shutil.copy(path, root / data_dir / path.name)
    videos = sorted((synth_set / "Video").rglob("*.mp4"))
    (root / video_dir).mkdir(parents=True)
    for video_id, source in zip(VIDEO_IDS, videos, strict=False):
        shutil.copy(source, root / video_dir / f"{video_id}.mp4")
    return root


def test_1k_a_reads_the_9k_train_list_and_one_sentence_per_test_video(synth_set, tmp_path):
    root = msrvtt_root(synth_set, tmp_path)
    dataset = read_msrvtt(root)
    assert dataset.name == "msrvtt" and dataset.split_counts() == {"train": 4, "test": 3}
    train = [v for v in dataset.videos if v.split == "train"]
    assert [v.id for v in train] == ["video0", "video1", "video2", "video3"]  # csv order
    # every MSRVTT_data.json sentence of a training video, in file order
    assert train[2].captions == (
        "a car drives on a highway",
        "traffic on a road with signs",
        "the road sign says exit",
    )
    test = [v for v in dataset.videos if v.split == "test"]
    # the JSFUSION rows, in their order, one sentence each (not the data file's sentences)
    assert [(v.id, v.captions) for v in test] == [
        ("video6", ("a woman stirs a pot",)),
        ("video4", ("a scoreboard shows the score",)),
        ("video5", ("a game menu on screen",)),
    ]
    assert [v.order for v in test] == [0, 1, 2]
    assert all(v.path == root / "MSRVTT_Videos" / f"{v.id}.mp4" for v in dataset.videos)
    assert all(v.path.exists() for v in dataset.videos)
    # 1k-A protocol: the test captions are one per video, in the video order (a square matrix)
    test_captions = [c for c in dataset.captions() if c.split == "test"]
    assert [dataset.videos[c.video].id for c in test_captions] == ["video6", "video4", "video5"]


def test_the_7k_list_and_the_full_split(synth_set, tmp_path):
    root = msrvtt_root(synth_set, tmp_path, video_dir="videos/all", data_dir="msrvtt_data")
    seven = read_msrvtt(root, train="7k")
    assert [v.id for v in seven.videos if v.split == "train"] == ["video0", "video2"]
    assert seven.videos[0].path == root / "videos" / "all" / "video0.mp4"
    full = read_msrvtt(root, split="full")
    assert full.split_counts() == {"train": 3, "val": 1, "test": 3}
    by_id = {v.id: v for v in full.videos}
    assert by_id["video4"].captions == ("players run on a field", "a scoreboard shows the score")
    assert by_id["video3"].split == "val"


@pytest.mark.parametrize(
    ("removed", "split", "message"),
    [
        ("MSRVTT_data.json", "1k-a", "needed for the video list and its sentences"),
        ("MSRVTT_data.json", "full", "needed for the video list and its sentences"),
        ("MSRVTT_train.9k.csv", "1k-a", "needed for the 1k-A training videos"),
        ("MSRVTT_JSFUSION_test.csv", "1k-a", "needed for the 1k-A test videos and sentences"),
    ],
)
def test_a_missing_file_names_itself_and_what_it_is_needed_for(
    synth_set, tmp_path, removed, split, message
):
    root = msrvtt_root(synth_set, tmp_path)
    (root / removed).unlink()
    with pytest.raises(DatasetError, match=message) as info:
        read_msrvtt(root, split=split)
    assert removed in str(info.value)


def test_the_full_split_needs_no_csv_files(synth_set, tmp_path):
    root = msrvtt_root(synth_set, tmp_path)
    for name in ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", "MSRVTT_JSFUSION_test.csv"):
        (root / name).unlink()
    assert len(read_msrvtt(root, split="full").videos) == 7


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("MSRVTT_data.json", "{bad", "invalid JSON at line 1"),
        ("MSRVTT_data.json", '{"videos": []}', "expected lists 'videos' and 'sentences'"),
        (
            "MSRVTT_data.json",
            '{"videos": [{"video_id": "../x", "split": "train"}], "sentences": []}',
            "outside the dataset root",
        ),
        (
            "MSRVTT_data.json",
            '{"videos": [], "sentences": [{"video_id": "video0", "caption": "x"}]}',
            "not in 'videos'",
        ),
        ("MSRVTT_train.9k.csv", "vid\nvideo0\n", "missing column(s) video_id"),
        ("MSRVTT_train.9k.csv", "video_id\nvideo4\n", "listed twice"),
        ("MSRVTT_train.9k.csv", "video_id\nvideo99\n", "no sentences"),
        ("MSRVTT_JSFUSION_test.csv", "key,video_id,sentence\nr,video4,\n", "empty 'sentence'"),
    ],
)
def test_malformed_files_are_one_clear_error(synth_set, tmp_path, file, content, message):
    root = msrvtt_root(synth_set, tmp_path)
    (root / file).write_text(content)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_msrvtt(root)


def test_the_cli_reads_msrvtt_into_a_manifest(synth_set, tmp_path):
    root = msrvtt_root(synth_set, tmp_path)
    work = tmp_path / "work"
    runner = CliRunner()
    args = ["data", "msrvtt", "--root", str(root), "--work", str(work), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "7 added" in result.output
    manifest = WorkDir(work).manifest
    assert manifest.attrs["dataset"] == "msrvtt"
    videos = manifest.videos.read(["id", "split", "error", "fps"])
    assert sorted(videos["id"]) == VIDEO_IDS and not any(videos["error"])
    assert all(videos["fps"] > 0)
    result = runner.invoke(app, [*args, "--split", "full"])  # another split, same root: update
    assert result.exit_code == 0, result.output
    videos = WorkDir(work).manifest.videos.read(["id", "split"])
    assert dict(zip(videos["id"], videos["split"], strict=True))["video3"] == "val"
    missing = ["data", "msrvtt", "--root", str(tmp_path / "nowhere"), "-w", str(tmp_path / "w")]
    result = runner.invoke(app, missing)
    assert result.exit_code != 0 and "MSR-VTT root folder not found" in str(result.exception)
