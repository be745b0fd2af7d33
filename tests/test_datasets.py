"""Dataset readers: the real TextVR test annotations, synthetic layouts, plain folders."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from cache import WorkDir
from cli.main import app
from pipeline.datasets import read_folder, read_textvr, safe_join, textvr_rand_columns
from pipeline.errors import DatasetError
from pipeline.manifest import build_manifest

DOMAINS = {
    "Activity": 1244,
    "Street_View_Indoor": 510,
    "Street_View_Outdoor": 415,
    "Driving": 134,
    "Sports": 119,
    "Cooking": 115,
    "News_Movie": 113,
    "Games": 77,
}


def test_real_textvr_test_file(textvr_files):
    dataset = read_textvr(textvr_files)
    raw = json.loads((textvr_files / "TextVR_test.json").read_text(encoding="utf-8"))
    assert len(dataset.videos) == 2727
    assert dataset.split_counts() == {"test": 2727}
    assert Counter(v.domain for v in dataset.videos) == DOMAINS
    assert [v.id for v in dataset.videos] == [e["path"] for e in raw]
    assert [v.order for v in dataset.videos] == list(range(2727))
    captions = list(dataset.captions())
    assert [c.text for c in captions] == [e["captions_info"][0]["caption"] for e in raw]
    assert [c.order for c in captions] == list(range(2727))
    assert [c.video for c in captions] == list(range(2727))
    # News_Movie clips keep their OCR elsewhere: Kwai_OCR is followed, not path
    news = [v for v in dataset.videos if v.domain == "News_Movie"]
    assert news and all(v.ocr_path.parent.name != "News_Movie" for v in news)
    assert all(v.ocr_path.is_relative_to(textvr_files.resolve() / "Kwai_VideoOCR") for v in news)


def test_real_textvr_rand_permutation(textvr_files):
    cols = textvr_rand_columns(
        textvr_files / "TextVR_test.json", textvr_files / "TextVR_test_rand.json"
    )
    test = json.loads((textvr_files / "TextVR_test.json").read_text(encoding="utf-8"))
    rand = json.loads((textvr_files / "TextVR_test_rand.json").read_text(encoding="utf-8"))
    assert sorted(cols.tolist()) == list(range(2727))
    assert (cols != np.arange(2727)).mean() > 0.9
    assert all(rand[cols[i]]["path"] == test[i]["path"] for i in range(2727))


def write_textvr(root, train=None, test=None, video_dir="Video"):
    (root / video_dir).mkdir(parents=True, exist_ok=True)
    if train is not None:
        (root / "TextVR_train.json").write_text(json.dumps(train))
    if test is not None:
        (root / "TextVR_test.json").write_text(json.dumps(test))
    return root


def entry(path, *captions, split="test", ocr=None):
    return {
        "path": path,
        "captions_info": [
            {"caption": c, "caption_info": {"duration": 0, "desc_id": 1}} for c in captions
        ],
        "videos_info": {
            "source": "t",
            "split": split,
            "Kwai_OCR": ocr or path.replace(".mp4", ".json"),
        },
    }


def test_train_entries_with_several_captions_and_videos_folder(tmp_path):
    write_textvr(
        tmp_path,
        train=[
            entry("Sports/a.mp4", "one", "two", "three", split="train"),
            entry("Games/b.mp4", "x", split="train"),
        ],
        test=[entry("Driving/c.mp4", "y")],
        video_dir="Videos",
    )
    dataset = read_textvr(tmp_path)
    assert dataset.split_counts() == {"train": 2, "test": 1}
    assert dataset.videos[0].path == tmp_path.resolve() / "Videos" / "Sports" / "a.mp4"
    captions = list(dataset.captions())
    assert [(c.id, c.split, c.order) for c in captions] == [
        ("Sports/a.mp4#0", "train", 0),
        ("Sports/a.mp4#1", "train", 1),
        ("Sports/a.mp4#2", "train", 2),
        ("Games/b.mp4#0", "train", 3),
        ("Driving/c.mp4#0", "test", 0),
    ]
    assert read_textvr(tmp_path, ("test",)).split_counts() == {"test": 1}


@pytest.mark.parametrize(
    "bad, message",
    [
        (entry("../../etc/passwd.mp4", "x"), "leads outside the dataset root"),
        (entry("Sports/../../x.mp4", "x"), "leads outside the dataset root"),
        (entry("/abs/x.mp4", "x"), "is absolute"),
        (entry("Sports/a.mp4", "x", ocr="../../secret.json"), "Kwai_OCR: path"),
        ({"path": "Sports/a.mp4", "captions_info": []}, "non-empty list"),
        ({"path": 3, "captions_info": [{"caption": "x"}]}, "non-string 'path'"),
        ({"path": "Sports/a.mp4", "captions_info": [{"text": "x"}]}, "no string 'caption'"),
        (entry("Sports/a.mp4", "x", split="train"), "split 'train' in the test file"),
        ("just a string", "expected an object"),
    ],
)
def test_bad_entries_are_refused_with_the_entry_named(tmp_path, bad, message):
    write_textvr(tmp_path, test=[entry("Sports/ok.mp4", "fine"), bad])
    with pytest.raises(DatasetError, match=message) as info:
        read_textvr(tmp_path)
    assert "TextVR_test.json: entry 1" in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(DatasetError, match="root folder not found"):
        read_textvr(tmp_path / "missing")
    (tmp_path / "TextVR_test_rand.json").write_text("[]")
    with pytest.raises(DatasetError, match="no ground truth"):
        read_textvr(tmp_path)
    (tmp_path / "TextVR_test.json").write_text("[{]")
    with pytest.raises(DatasetError, match="TextVR_test.json: invalid JSON at line 1"):
        read_textvr(tmp_path)
    (tmp_path / "TextVR_test.json").write_bytes(b'["\xff"]')
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_textvr(tmp_path)
    (tmp_path / "TextVR_test.json").write_text('{"path": "a"}')
    with pytest.raises(DatasetError, match="expected a JSON list"):
        read_textvr(tmp_path)
    write_textvr(
        tmp_path, train=[entry("A/a.mp4", "x", split="train")], test=[entry("A/a.mp4", "y")]
    )
    with pytest.raises(DatasetError, match="already listed in TextVR_train.json entry 0"):
        read_textvr(tmp_path)


def test_safe_join_accepts_inner_dots(tmp_path):
    assert safe_join(tmp_path, "a/./b/../c.mp4", "x") == tmp_path / "a" / "c.mp4"


def test_folder_reader_csv_and_json(tmp_path):
    (tmp_path / "vids").mkdir()
    csv_file = tmp_path / "caps.csv"
    csv_file.write_text(
        "video,caption,split\nshop/a.mp4,The sign says OPEN,train\nb.mp4,A plate KX 1,test\n"
        'shop/a.mp4,"A shop, open late",train\n'
    )
    dataset = read_folder(tmp_path / "vids", csv_file)
    assert [(v.id, v.split, v.order, v.captions, v.domain) for v in dataset.videos] == [
        ("shop/a.mp4", "train", 0, ("The sign says OPEN", "A shop, open late"), "shop"),
        ("b.mp4", "test", 0, ("A plate KX 1",), ""),
    ]
    json_file = tmp_path / "caps.json"
    json_file.write_text(json.dumps([{"video": "b.mp4", "caption": "x", "split": "test"}]))
    assert [v.id for v in read_folder(tmp_path / "vids", json_file).videos] == ["b.mp4"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("video,caption\na.mp4,x\n", "missing or non-string column"),
        ("video,caption,split\na.mp4,x,train\na.mp4,y,test\n", "is in split 'train' and 'test'"),
        ("video,caption,split\n../a.mp4,x,train\n", "leads outside"),
        ("vid,cap\n", "no caption rows; expected columns video, caption, split"),
        ("[]", "no caption rows"),
        # the caption cut at the comma, its rest read as the split: refused, not read
        ("video,caption,split\na.mp4,at night, OPEN 24H,test\n", "row 1 has more fields than"),
    ],
)
def test_folder_reader_errors(tmp_path, content, message):
    (tmp_path / "vids").mkdir()
    (tmp_path / "caps.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_folder(tmp_path / "vids", tmp_path / "caps.csv")


def test_tsv_captions_may_begin_with_a_quote_and_cells_are_read_without_padding(tmp_path):
    """A TSV caption beginning with `"` swallowed every row after it (CSV quoting), and
    `video, caption, split` gave each video the split ' test'."""
    (tmp_path / "vids").mkdir()
    tsv = tmp_path / "caps.tsv"
    tsv.write_text(
        'video\tcaption\tsplit\na.mp4\t"OPEN 24H" sign at night\ttest\nb.mp4\ta bus\ttest\n'
    )
    videos = read_folder(tmp_path / "vids", tsv).videos
    assert [(v.id, v.split, v.captions) for v in videos] == [
        ("a.mp4", "test", ('"OPEN 24H" sign at night',)),
        ("b.mp4", "test", ("a bus",)),
    ]
    padded = tmp_path / "caps.csv"
    padded.write_text("video, caption, split\na.mp4, a red car, test\n")
    videos = read_folder(tmp_path / "vids", padded).videos
    assert [(v.id, v.split, v.captions) for v in videos] == [("a.mp4", "test", ("a red car",))]


def test_reading_some_splits_again_leaves_the_others_in_the_manifest(tmp_path, monkeypatch):
    """`tcd data textvr --split test` after a full read must not mark the train videos
    removed (a later `cache gc` would delete their features); within the split read, a
    video gone from its file is removed as before."""
    from cache import WorkDir
    from pipeline.manifest import build_manifest

    train = [
        entry("Sports/a.mp4", "one", split="train"),
        entry("Games/b.mp4", "two", split="train"),
    ]
    root = write_textvr(tmp_path / "tv", train=train, test=[entry("Driving/c.mp4", "three")])
    work = WorkDir(tmp_path / "w", create=True)
    build_manifest(work, read_textvr(root), progress=False)
    again = build_manifest(work, read_textvr(root, ("test", "test")), progress=False)
    assert (again.videos.removed, again.captions.removed) == (0, 0)
    present = work.manifest.videos.read(["id", "present"])
    assert present["present"].all() and len(present["id"]) == 3
    write_textvr(root, test=[])  # the test file now lists no video
    gone = build_manifest(work, read_textvr(root, ("test",)), progress=False)
    assert (gone.videos.removed, gone.captions.removed) == (1, 1)
    videos = work.manifest.videos.read(["id", "present"])
    assert dict(zip(videos["id"], videos["present"], strict=True)) == {
        "Sports/a.mp4": True,
        "Games/b.mp4": True,
        "Driving/c.mp4": False,
    }
    # one split from another root would leave the others from the old root: refused
    other = write_textvr(tmp_path / "other", test=[entry("Driving/c.mp4", "three")])
    with pytest.raises(DatasetError, match="--replace"):
        build_manifest(work, read_textvr(other, ("test",)), progress=False)


def test_a_video_that_failed_its_probe_is_probed_again(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cache import WorkDir
    from pipeline import manifest
    from pipeline.errors import VideoError

    root = write_textvr(tmp_path / "tv", test=[entry("Driving/c.mp4", "three")])
    (root / "Video" / "Driving").mkdir()
    (root / "Video" / "Driving" / "c.mp4").write_bytes(b"x" * 100)
    work = WorkDir(tmp_path / "w", create=True)

    def failing(path):
        raise VideoError(f"{path}: the file system hiccuped")

    monkeypatch.setattr(manifest, "probe", failing)
    assert manifest.build_manifest(work, read_textvr(root), progress=False).unreadable == 1
    monkeypatch.setattr(
        manifest, "probe", lambda path: SimpleNamespace(duration=2.0, fps=10.0, n_frames=20)
    )
    assert manifest.build_manifest(work, read_textvr(root), progress=False).unreadable == 0
    assert work.manifest.videos.read(["error", "fps"])["fps"][0] == 10.0


def test_tables_with_a_byte_order_mark_and_linked_folders_are_read(tmp_path):
    (tmp_path / "vids" / "own").mkdir(parents=True)
    (tmp_path / "vids" / "own" / "a.mp4").write_bytes(b"")
    (tmp_path / "elsewhere" / "linked").mkdir(parents=True)
    (tmp_path / "elsewhere" / "linked" / "e.mp4").write_bytes(b"")
    (tmp_path / "vids" / "linked").symlink_to(tmp_path / "elsewhere" / "linked")
    (tmp_path / "vids" / "own" / "loop").symlink_to(tmp_path / "vids")  # a cycle: read once
    (tmp_path / "vids" / "zz").mkdir()
    (tmp_path / "vids" / "zz" / "x.mp4").write_bytes(b"")
    (tmp_path / "vids" / "aa").symlink_to(tmp_path / "vids" / "zz")  # inside: by its own path
    for phone_or_camcorder in ("phone.3gp", "camcorder.MTS", "old.flv"):  # were left out
        (tmp_path / "vids" / "zz" / phone_or_camcorder).write_bytes(b"")
    ids = [v.id for v in read_folder(tmp_path / "vids").videos]
    assert ids == [
        "linked/e.mp4", "own/a.mp4", "zz/camcorder.MTS", "zz/old.flv", "zz/phone.3gp", "zz/x.mp4"
    ]  # fmt: skip
    table = tmp_path / "caps.csv"  # Excel's "CSV UTF-8": a byte order mark, padded headers
    table.write_bytes("\ufeffvideo, caption ,split\nown/a.mp4,OPEN,test\n".encode())
    assert [v.captions for v in read_folder(tmp_path / "vids", table).videos] == [("OPEN",)]
    as_json = tmp_path / "caps.json"
    as_json.write_bytes(
        "\ufeff".encode()
        + json.dumps([{"video": "own/a.mp4", "caption": "x", "split": "test"}]).encode()
    )
    assert [v.id for v in read_folder(tmp_path / "vids", as_json).videos] == ["own/a.mp4"]


def test_half_an_emoji_in_a_caption_is_replaced_not_fatal(tmp_path):
    """A JSON escape of half a surrogate pair is valid JSON but no UTF-8 text."""
    (tmp_path / "vids").mkdir()
    (tmp_path / "vids" / "a.mp4").write_bytes(b"")
    table = tmp_path / "caps.json"
    table.write_text('[{"video": "a.mp4", "caption": "half \\ud83d", "split": "test"}]')
    work = WorkDir(tmp_path / "work", create=True)
    build_manifest(work, read_folder(tmp_path / "vids", table), progress=False)
    assert work.manifest.captions.column("text").tolist() == ["half ?"]


def test_a_file_name_that_is_not_utf8_is_skipped_with_a_warning_naming_it(tmp_path):
    videos = tmp_path / "vids"
    videos.mkdir()
    (videos / "ok.mp4").write_bytes(b"")
    with open(os.fsencode(videos) + b"/caf\xe9.mp4", "wb"):
        pass
    dataset = read_folder(videos)
    assert [v.id for v in dataset.videos] == ["ok.mp4"]
    assert dataset.skipped == [
        f"{os.fsencode(videos) + b'/caf' + bytes([0xE9]) + b'.mp4'!r}: "
        "file name is not UTF-8; rename it to read it"
    ]
    result = CliRunner().invoke(
        app, ["data", "folder", "--videos", str(videos), "-w", str(tmp_path / "w"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "warning: skipped b'" in result.output and "caf\\xe9.mp4" in result.output
    assert WorkDir(tmp_path / "w").manifest.videos.column("id").tolist() == ["ok.mp4"]
