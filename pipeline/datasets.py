"""Dataset readers: TextVR annotation files, MSR-VTT (CLIP4Clip's layout) and a plain folder
of videos with a caption table.

Both produce a `Dataset`: videos in annotation order, each with its captions. Readers only
parse and validate; they do not open videos (the manifest stage does, and records failures
per video). Every path taken from an annotation is resolved inside the dataset root.
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cache.store import storable_text
from pipeline.errors import DatasetError

TEXTVR_FILES = {"train": "TextVR_train.json", "test": "TextVR_test.json"}
TEXTVR_RAND_FILE = "TextVR_test_rand.json"
TEXTVR_VIDEO_DIRS = ("Video", "Videos")
TEXTVR_OCR_DIR = "Kwai_VideoOCR"


@dataclass(frozen=True)
class VideoEntry:
    """One video of a dataset. `id` is its path relative to the video folder (stable)."""

    id: str
    path: Path
    split: str
    order: int  # position among the videos of its split, in annotation order
    captions: tuple[str, ...] = ()
    domain: str = ""
    ocr_path: Path | None = None


@dataclass(frozen=True)
class CaptionEntry:
    """One caption/query. `order` is its position among the captions of its split."""

    id: str
    video: int  # index into Dataset.videos
    text: str
    split: str
    order: int


@dataclass
class Dataset:
    name: str
    root: Path
    videos: list[VideoEntry] = field(default_factory=list)
    # the splits read, where only some were asked for (`--split`): the manifest then leaves
    # the other splits' videos as they are; None: the whole dataset, whatever it lacks now
    # is removed
    splits: tuple[str, ...] | None = None
    # why files that look like videos were left out (one line each, for the user to fix)
    skipped: list[str] = field(default_factory=list)

    def captions(self) -> Iterator[CaptionEntry]:
        """Captions in annotation order; ids are `<video id>#<k>`; texts storable (a JSON
        escape of half an emoji becomes '?': `storable_text`)."""
        order: dict[str, int] = {}
        for index, video in enumerate(self.videos):
            for k, text in enumerate(video.captions):
                position = order.get(video.split, 0)
                order[video.split] = position + 1
                caption = storable_text(text)
                yield CaptionEntry(f"{video.id}#{k}", index, caption, video.split, position)

    def split_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for video in self.videos:
            counts[video.split] = counts.get(video.split, 0) + 1
        return counts


def relative_path(relative: Any, where: str) -> str:
    """Validate and normalise a dataset-relative path (posix form, no `.` or `..` parts).

    Absolute paths and paths that climb out of their base folder are refused.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise DatasetError(f"{where}: expected a relative path, got {relative!r}")
    relative = relative.strip()
    if "\x00" in relative or "\\" in relative:
        raise DatasetError(f"{where}: path {relative!r} contains a forbidden character")
    if PurePosixPath(relative).is_absolute():
        raise DatasetError(f"{where}: path {relative!r} is absolute; paths must be relative")
    normal = posixpath.normpath(relative)
    if normal == ".." or normal.startswith("../") or normal == ".":
        raise DatasetError(f"{where}: path {relative!r} leads outside the dataset root")
    return normal


def safe_join(base: Path, relative: Any, where: str) -> Path:
    """`base / relative` for a validated relative path (see `relative_path`)."""
    return base / relative_path(relative, where)


# -- TextVR ---------------------------------------------------------------------------------
def textvr_video_dir(root: Path) -> Path:
    """`Video/` or `Videos/` under the root (the README says `Videos/`; the release `Video/`)."""
    for name in TEXTVR_VIDEO_DIRS:
        if (root / name).is_dir():
            return root / name
    return root / TEXTVR_VIDEO_DIRS[0]


def read_textvr(root: str | Path, splits: tuple[str, ...] | None = None) -> Dataset:
    """Read a TextVR folder (see TEXTVR_FORMAT.md). `splits=None` reads every file present
    (a split whose file is gone then leaves the manifest); given splits, only those are read
    and the manifest's other splits are left as they are."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: TextVR root folder not found")
    wanted = splits or tuple(s for s, name in TEXTVR_FILES.items() if (root / name).exists())
    if not wanted:
        hint = ""
        if (root / TEXTVR_RAND_FILE).exists():
            hint = (
                f"; {TEXTVR_RAND_FILE} alone has no ground truth: the unscrambled "
                f"{TEXTVR_FILES['test']} is needed to evaluate"
            )
        raise DatasetError(f"{root}: no {' or '.join(TEXTVR_FILES.values())} found{hint}")
    wanted = tuple(dict.fromkeys(wanted))  # `--split test --split test` reads it once
    video_dir = textvr_video_dir(root)
    dataset = Dataset(name="textvr", root=root, splits=wanted if splits else None)
    seen: dict[str, str] = {}
    for split in wanted:
        if split not in TEXTVR_FILES:
            raise DatasetError(f"unknown TextVR split {split!r}; expected train or test")
        path = root / TEXTVR_FILES[split]
        entries = _load_json_list(path)
        for index, entry in enumerate(entries):
            where = f"{path.name}: entry {index}"
            video = _textvr_entry(entry, where, split, index, root, video_dir)
            if video.id in seen:
                raise DatasetError(
                    f"{where}: video {video.id!r} already listed in {seen[video.id]}"
                )
            seen[video.id] = f"{path.name} entry {index}"
            dataset.videos.append(video)
    return dataset


def _textvr_entry(
    entry: Any, where: str, split: str, order: int, root: Path, video_dir: Path
) -> VideoEntry:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    rel = entry.get("path")
    if not isinstance(rel, str):
        raise DatasetError(f"{where}: missing or non-string 'path'")
    rel = relative_path(rel, where)
    path = video_dir / rel
    infos = entry.get("captions_info")
    if not isinstance(infos, list) or not infos:
        raise DatasetError(f"{where} ({rel}): 'captions_info' must be a non-empty list")
    captions = []
    for k, info in enumerate(infos):
        text = info.get("caption") if isinstance(info, dict) else None
        if not isinstance(text, str):
            raise DatasetError(f"{where} ({rel}): captions_info[{k}] has no string 'caption'")
        captions.append(text)
    videos_info = entry.get("videos_info", {})
    if not isinstance(videos_info, dict):
        raise DatasetError(f"{where} ({rel}): 'videos_info' must be an object")
    file_split = videos_info.get("split", split)
    if file_split != split:
        raise DatasetError(f"{where} ({rel}): split {file_split!r} in the {split} file")
    kwai = videos_info.get("Kwai_OCR")
    ocr_path = None
    if kwai is not None:
        ocr_path = safe_join(root / TEXTVR_OCR_DIR, kwai, f"{where} Kwai_OCR")
    return VideoEntry(
        id=rel,
        path=path,
        split=split,
        order=order,
        captions=tuple(captions),
        domain=PurePosixPath(rel).parts[0] if len(PurePosixPath(rel).parts) > 1 else "",
        ocr_path=ocr_path,
    )


def textvr_rand_columns(test_file: str | Path, rand_file: str | Path) -> np.ndarray:
    """For caption i of the unscrambled test file, its video's column in the `_rand` file.

    A matrix built in `_rand` video order holds caption i's true video at column `cols[i]`.
    """
    test = _load_json_list(Path(test_file))
    rand = _load_json_list(Path(rand_file))
    position = {}
    for j, entry in enumerate(rand):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise DatasetError(f"{rand_file}: entry {j}: missing or non-string 'path'")
        position[entry["path"]] = j
    if len(test) != len(rand) or len(position) != len(rand):
        raise DatasetError(
            f"{rand_file}: {len(rand)} entries ({len(position)} distinct paths) do not match "
            f"{test_file} ({len(test)} entries)"
        )
    try:
        return np.array([position[entry["path"]] for entry in test], dtype=np.int64)
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{test_file}: a video is missing from {rand_file} ({exc})") from None


# -- plain folder ---------------------------------------------------------------------------
FOLDER_COLUMNS = ("video", "caption", "split")


VIDEO_SUFFIXES = (
    *(".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"),
    *(".3gp", ".3g2", ".mts", ".m2ts", ".flv", ".f4v", ".ogv", ".vob", ".mxf", ".asf"),
)  # (phones' 3GP, camcorders' AVCHD .mts/.m2ts, Flash, Ogg, DVD, broadcast MXF)
COLLECTION_SPLIT = "all"  # the split of a folder read without a caption table


def read_folder(
    videos_dir: str | Path, captions_file: str | Path | None = None, name: str = "folder"
) -> Dataset:
    """A folder of videos plus a CSV or JSON table with columns `video,caption,split`.

    `video` is a path relative to `videos_dir`; a video with several captions has several rows.
    Without a table, every video file under the folder (by suffix, sorted by path) is read
    into split `all` with no captions: a collection to search, not to evaluate.
    """
    videos_dir = Path(videos_dir).resolve()
    if not videos_dir.is_dir():
        raise DatasetError(f"{videos_dir}: video folder not found")
    if captions_file is None:
        return _read_collection(videos_dir, name)
    captions_file = Path(captions_file)
    rows = _read_caption_table(captions_file)
    if not rows:  # a header alone (even a wrong one) would read as an empty dataset
        raise DatasetError(
            f"{captions_file}: no caption rows; expected columns {', '.join(FOLDER_COLUMNS)}"
        )
    grouped: dict[str, dict[str, Any]] = {}
    for index, row in enumerate(rows):
        where = f"{captions_file.name}: row {index + 1}"
        missing = [c for c in FOLDER_COLUMNS if not isinstance(row.get(c), str)]
        if missing:
            raise DatasetError(f"{where}: missing or non-string column(s) {', '.join(missing)}")
        # cells as typed around the separators (`video, caption, split`): split ' test'
        video, split, caption = (row[c].strip() for c in ("video", "split", "caption"))
        rel = relative_path(video, where)
        item = grouped.setdefault(rel, {"path": videos_dir / rel, "split": split, "captions": []})
        if item["split"] != split:
            raise DatasetError(
                f"{where}: video {rel!r} is in split {item['split']!r} and {split!r}"
            )
        item["captions"].append(caption)
    dataset = Dataset(name=name, root=videos_dir)
    order: dict[str, int] = {}
    for rel, item in grouped.items():
        position = order.get(item["split"], 0)
        order[item["split"]] = position + 1
        parts = PurePosixPath(rel).parts
        dataset.videos.append(
            VideoEntry(
                id=rel,
                path=item["path"],
                split=item["split"],
                order=position,
                captions=tuple(item["captions"]),
                domain=parts[0] if len(parts) > 1 else "",
            )
        )
    return dataset


def _files_under(folder: Path) -> Iterator[Path]:
    """The files (and file links) under `folder`, hidden entries left out, links to folders
    outside it followed (a link to a folder inside it is not: that folder is listed by its
    own path, whichever comes first; each real folder once, so a link cycle ends)."""
    inside = os.path.realpath(folder)
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        followed = []
        for name in sorted(dirs):
            path = os.path.join(top, name)
            if name.startswith("."):
                continue
            if os.path.islink(path) and Path(os.path.realpath(path)).is_relative_to(inside):
                continue  # listed by its own path
            followed.append(name)
        dirs[:] = followed
        for name in files:
            if not name.startswith("."):
                yield Path(top) / name


def _read_collection(videos_dir: Path, name: str) -> Dataset:
    """Every video file under `videos_dir` (hidden files and folders skipped, linked folders
    followed), split `all`. A file whose path is not UTF-8 (the manifest stores UTF-8 text)
    is left out, and named in `Dataset.skipped`."""
    found, skipped = [], []
    for path in _files_under(videos_dir):
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        relative = path.relative_to(videos_dir).as_posix()
        try:
            relative.encode("utf-8")
        except UnicodeEncodeError:  # os.walk kept the undecodable bytes as surrogates
            skipped.append(f"{os.fsencode(path)!r}: file name is not UTF-8; rename it to read it")
            continue
        found.append(relative)
    found.sort()
    if not found:
        suffixes = ", ".join(VIDEO_SUFFIXES)
        raise DatasetError(f"{videos_dir}: no video files ({suffixes}) in the folder")
    dataset = Dataset(name=name, root=videos_dir, skipped=sorted(skipped))
    for order, rel in enumerate(found):
        parts = PurePosixPath(rel).parts
        dataset.videos.append(
            VideoEntry(
                id=rel,
                path=videos_dir / rel,
                split=COLLECTION_SPLIT,
                order=order,
                domain=parts[0] if len(parts) > 1 else "",
            )
        )
    return dataset


# -- MSR-VTT --------------------------------------------------------------------------------
MSRVTT_DATA = "MSRVTT_data.json"
MSRVTT_TRAIN = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
MSRVTT_TEST_1KA = "MSRVTT_JSFUSION_test.csv"
MSRVTT_VIDEO_DIRS = ("MSRVTT_Videos", "videos/all")
MSRVTT_SPLITS = ("1k-a", "full")
MSRVTT_FULL_SPLITS = {"train": "train", "validate": "val", "test": "test"}  # file -> ours


def read_msrvtt(root: str | Path, split: str = "1k-a", train: str = "9k") -> Dataset:
    """Read MSR-VTT in the layout most text-video code uses (CLIP4Clip's).

    `split="1k-a"`: train = the videos of `MSRVTT_train.9k.csv` (or `.7k.csv`, `train="7k"`)
    with all their `MSRVTT_data.json` sentences; test = `MSRVTT_JSFUSION_test.csv`, one
    sentence per video (the usual 1k-A protocol). `split="full"`: the official split of
    `MSRVTT_data.json` (train / validate -> val / test), all sentences. Videos are
    `MSRVTT_Videos/<video_id>.mp4` (or `videos/all/`); ids are the `video_id`s. Annotation
    files are found at the root or in its `msrvtt_data/` folder.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: MSR-VTT root folder not found")
    if split not in MSRVTT_SPLITS:
        raise DatasetError(f"unknown MSR-VTT split {split!r}; expected one of {MSRVTT_SPLITS}")
    if train not in MSRVTT_TRAIN:
        raise DatasetError(f"unknown MSR-VTT train list {train!r}; expected 9k or 7k")
    video_dir = next(
        (root / d for d in MSRVTT_VIDEO_DIRS if (root / d).is_dir()), root / MSRVTT_VIDEO_DIRS[0]
    )
    data_path = _msrvtt_file(root, MSRVTT_DATA, "the video list and its sentences")
    videos, sentences = _msrvtt_data(data_path)
    dataset = Dataset(name="msrvtt", root=root)
    if split == "full":
        for video_id, file_split in videos.items():
            if file_split not in MSRVTT_FULL_SPLITS:
                raise DatasetError(
                    f"{data_path.name}: video {video_id!r} has split {file_split!r}; expected "
                    f"one of {', '.join(MSRVTT_FULL_SPLITS)}"
                )
        chosen = [(v, MSRVTT_FULL_SPLITS[s], sentences.get(v, [])) for v, s in videos.items()]
    else:
        train_path = _msrvtt_file(root, MSRVTT_TRAIN[train], "the 1k-A training videos")
        test_path = _msrvtt_file(root, MSRVTT_TEST_1KA, "the 1k-A test videos and sentences")
        chosen = [(v, "train", sentences.get(v, [])) for v in _msrvtt_train_ids(train_path)]
        chosen += [(v, "test", [text]) for v, text in _msrvtt_test_rows(test_path)]
    order: dict[str, int] = {}
    seen: set[str] = set()
    for video_id, video_split, texts in chosen:
        where = f"MSR-VTT video {video_id!r}"
        if video_id in seen:
            raise DatasetError(f"{where} is listed twice (in the train and test lists?)")
        seen.add(video_id)
        if not texts:
            raise DatasetError(f"{where}: no sentences for it in {data_path.name}")
        position = order.get(video_split, 0)
        order[video_split] = position + 1
        dataset.videos.append(
            VideoEntry(
                id=video_id,
                path=safe_join(video_dir, f"{video_id}.mp4", where),
                split=video_split,
                order=position,
                captions=tuple(texts),
            )
        )
    return dataset


def _msrvtt_file(root: Path, name: str, needed_for: str) -> Path:
    """`root/name` or `root/msrvtt_data/name`; a missing file names itself and its use."""
    for path in (root / name, root / "msrvtt_data" / name):
        if path.is_file():
            return path
    raise DatasetError(
        f"{root}: {name} not found (in the root or msrvtt_data/); needed for {needed_for}"
    )


def _msrvtt_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: expected a string video_id, got {value!r}")
    value = value.strip()
    if relative_path(value, where) != value or "/" in value:
        raise DatasetError(f"{where}: video_id {value!r} must be a plain file name")
    return value


def _msrvtt_data(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """`MSRVTT_data.json` -> (video_id -> split, video_id -> sentences in file order)."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected an object with 'videos' and 'sentences'")
    entries, sentences = data.get("videos"), data.get("sentences")
    if not isinstance(entries, list) or not isinstance(sentences, list):
        raise DatasetError(f"{path}: expected lists 'videos' and 'sentences'")
    videos: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"{path.name}: videos[{index}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: expected an object")
        split = entry.get("split")
        if not isinstance(split, str):
            raise DatasetError(f"{where}: missing string 'split'")
        videos[_msrvtt_id(entry.get("video_id"), where)] = split
    texts: dict[str, list[str]] = {}
    for index, entry in enumerate(sentences):
        where = f"{path.name}: sentences[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str):
            raise DatasetError(f"{where}: expected an object with a string 'caption'")
        video_id = _msrvtt_id(entry.get("video_id"), where)
        if video_id not in videos:
            raise DatasetError(f"{where}: video {video_id!r} is not in 'videos'")
        texts.setdefault(video_id, []).append(entry["caption"])
    return videos, texts


def _msrvtt_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    rows = _read_caption_table(path)
    if rows and (missing := [c for c in columns if c not in rows[0]]):
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    return rows


def _msrvtt_train_ids(path: Path) -> list[str]:
    rows = _msrvtt_csv(path, ("video_id",))
    return [_msrvtt_id(row["video_id"], f"{path.name}: row {i + 1}") for i, row in enumerate(rows)]


def _msrvtt_test_rows(path: Path) -> list[tuple[str, str]]:
    """(video_id, sentence) per row of the JSFUSION test file: one sentence per video."""
    rows = _msrvtt_csv(path, ("video_id", "sentence"))
    out = []
    for index, row in enumerate(rows):
        where = f"{path.name}: row {index + 1}"
        if not isinstance(row["sentence"], str) or not row["sentence"].strip():
            raise DatasetError(f"{where}: empty 'sentence'")
        out.append((_msrvtt_id(row["video_id"], where), row["sentence"]))
    return out


def _read_caption_table(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path}: caption table not found")
    if path.suffix.lower() == ".json":
        rows = _load_json_list(path)
        if not all(isinstance(r, dict) for r in rows):
            raise DatasetError(
                f"{path}: expected a JSON list of objects with {', '.join(FOLDER_COLUMNS)}"
            )
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        tsv = path.suffix.lower() == ".tsv"
        try:
            # utf-8-sig: Excel's "CSV UTF-8" starts the file with a byte order mark
            with path.open(newline="", encoding="utf-8-sig") as f:
                # a TSV is split on tabs alone: with CSV quoting, a caption that began with
                # a quote swallowed the rows after it
                reader = (
                    csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                    if tsv
                    else csv.DictReader(f)
                )
                if reader.fieldnames:
                    reader.fieldnames = [name.strip() for name in reader.fieldnames]
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(f"{path}: cannot read the table ({exc})") from None
        for index, row in enumerate(rows):
            if None in row:  # DictReader's key for the fields past the header's
                hint = "a tab inside a caption" if tsv else "a comma in an unquoted caption"
                raise DatasetError(
                    f"{path.name}: row {index + 1} has more fields than the header "
                    f"({', '.join(reader.fieldnames or ())}): {hint}? (its caption would "
                    "be cut there)"
                )
        return rows
    raise DatasetError(f"{path}: caption table must be .csv, .tsv or .json")


def _read_json(path: Path) -> Any:
    """A JSON annotation file's content; `DatasetError` naming the file when it is missing,
    not UTF-8 or not JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))  # (a byte order mark too)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None


def _load_json_list(path: Path) -> list[Any]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data
