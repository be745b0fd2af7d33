"""OCR brought from elsewhere: the `import` engine's readers, one per file format.

Any spotter's output can feed the window captions through one of these formats
(`ocr.import_format`), one file per video:

    jsonl    one JSON object per line and detection:
             {"t": seconds, "text": "...", "score": 0.97, "box": [[x, y] x 4]}
             (`score`, default 1, and `box` optional; `track`, an integer, optional too)
    bovtext  BOVText's `gt_video_N.json`: frame ("frame_1" or "1") -> list of
             {"points": 8 numbers, "tracking ID", "transcription", "category"}
    icdar    ICDAR 2013/2015 Text in Videos XML: <frame ID> / <object Transcription ID
             Quality> / 4 <Point x y>
    kwai     TextVR's Kwai_VideoOCR JSON: track -> {"text", "score", "tracks": frame -> box}

Frame numbers become seconds with the video's frame rate (the manifest's `fps`): BOVText and
ICDAR count frames from 1, Kwai from 0. Illegible text (`###` in BOVText, `##DONT#CARE##` in
ICDAR) is left out; annotations without a confidence score 1.

Where each video's file is (`annotation_paths`): the row of `ocr.import_map` naming the video
(a two-column table: video, annotation file), else the format's file names for the video
under `ocr.import_dir` (mirroring the video's id, then flat), else, for kwai, the manifest's
`ocr_path` (TextVR's Kwai_OCR). A missing file means no scene text. Each row's cache key adds
the file's content key (`annotation_keys`), so adding or editing a file recomputes its video.

Every reader returns the lines the OCR stage stores (`Line`: text, score, 4x2 box, t, track),
sorted by time, and raises `OcrError` naming the file (and the line, or the frame and entry
of a JSON file) for malformed content.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from xml.parsers import expat

import numpy as np

from cache.errors import TcdError
from cache.keys import content_key
from cache.store import storable_text
from pipeline.datasets import TEXTVR_OCR_DIR, VIDEO_SUFFIXES, relative_path
from pipeline.errors import DatasetError

if TYPE_CHECKING:
    from cache import WorkDir
    from pipeline.settings import OcrSettings


class OcrError(TcdError):
    """An OCR engine cannot run (missing package or models) or its input is malformed."""


Line = dict[str, Any]
TIME_DECIMALS = 3  # a line's time `t` is kept to the millisecond
NO_BOX = [[0.0, 0.0]] * 4  # the box of a line imported without one
BOVTEXT_ILLEGIBLE = "###"
ICDAR_ILLEGIBLE = "##DONT#CARE##"
FIRST_FRAME = {"bovtext": 1, "icdar": 1, "kwai": 0}  # the number of a video's first frame


def line_time(seconds: float) -> float:
    """A sampled time as a line records it (`t`): to the millisecond."""
    return round(float(seconds), TIME_DECIMALS)


def _line(text: str, score: float, box: np.ndarray | list, t: float, track: int) -> Line:
    """Every reader's line (its text storable: a JSON escape may leave half an emoji)."""
    box, text = np.asarray(box, dtype=float).reshape(4, 2).tolist(), storable_text(text)
    return {"text": text, "score": float(score), "box": box, "t": line_time(t), "track": track}


def _number(value: Any) -> bool:
    """A finite int or float (JSON `true` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _box(value: Any) -> np.ndarray | None:
    """[[x, y] x 4] or 8 numbers -> a 4x2 array; None when it is neither."""
    if not isinstance(value, list):
        return None
    flat = (
        [v for point in value for v in point] if all(isinstance(p, list) for p in value) else value
    )
    if len(flat) != 8 or not all(_number(v) for v in flat):
        return None
    return np.asarray(flat, dtype=float).reshape(4, 2)


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None when there is no file (no scene text)."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OcrError(f"{path}: cannot read the OCR file ({exc.strerror or exc})") from None


def _read_text(path: Path) -> str | None:
    """The file's UTF-8 text, or None when there is no file (no scene text)."""
    data = _read_bytes(path)
    if data is None:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OcrError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _frame_time(path: Path, index: int, fps: float, first: int, where: str) -> float:
    if index < first:
        raise OcrError(f"{path}: {where}: frame numbers start at {first}, got {index}")
    return (index - first) / fps


def _require_fps(path: Path, fps: float) -> None:
    if not (_number(fps) and fps > 0):
        raise OcrError(
            f"{path}: the video's frame rate is unknown, cannot place OCR frames in time"
        )


def _json_object(path: Path, fps: float, of: str) -> dict | None:
    """A per-video JSON file's top-level object (`of`: what it maps, for the message), or
    None for a missing file (no text). Malformed content raises `OcrError` naming the file
    and the line."""
    text = _read_text(path)
    if text is None:
        return None
    _require_fps(path, fps)
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise OcrError(f"{path}: not valid OCR JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise OcrError(f"{path}: expected an object of {of}, got {type(data).__name__}")
    return data


def _track_numbers() -> Callable[[Any], int]:
    """Track ids of any JSON type -> 0, 1, 2... in order of first appearance."""
    numbers: dict[str, int] = {}

    def number(track_id: Any) -> int:
        return numbers.setdefault(json.dumps(track_id, sort_keys=True), len(numbers))

    return number


# -- JSON Lines -----------------------------------------------------------------------------
def read_jsonl_ocr(path: str | Path, fps: float = 0.0) -> list[Line]:
    """One JSON object per line: `{"t", "text", "score"?, "box"?, "track"?}` (see the module
    docstring); blank lines are skipped. `fps` is not needed (times are in seconds)."""
    path = Path(path)
    text = _read_text(path)
    if text is None:
        return []
    lines = []
    # lines end at "\n" alone: `splitlines` also ends them at U+2028, U+2029 and U+0085,
    # which `json.dumps(..., ensure_ascii=False)` leaves unescaped inside a text
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path}: line {number}"
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise OcrError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise OcrError(f"{where}: expected an object, got {type(item).__name__}")
        t, found, score = item.get("t"), item.get("text"), item.get("score", 1.0)
        if not (_number(t) and t >= 0):
            raise OcrError(f"{where}: 't' must be a time in seconds >= 0, got {t!r}")
        if not isinstance(found, str):
            raise OcrError(f"{where}: missing string 'text'")
        if not (_number(score) and 0 <= score <= 1):
            raise OcrError(f"{where}: 'score' must be a number in [0, 1], got {score!r}")
        box = _box(item["box"]) if "box" in item else np.asarray(NO_BOX)
        if box is None:
            raise OcrError(f"{where}: 'box' must be 4 [x, y] points of finite numbers")
        track = item.get("track", -1)
        if not isinstance(track, int) or isinstance(track, bool):
            raise OcrError(f"{where}: 'track' must be an integer, got {track!r}")
        lines.append(_line(found, score, box, t, track))
    lines.sort(key=lambda line: line["t"])
    return lines


# -- BOVText --------------------------------------------------------------------------------
def read_bovtext_ocr(path: str | Path, fps: float) -> list[Line]:
    """BOVText's per-video JSON: frame key (`"frame_1"` or `"1"`, from 1) -> list of entries
    with `points` (8 numbers), `tracking ID`, `transcription` (`###`: illegible, left out)
    and `category`."""
    path = Path(path)
    data = _json_object(path, fps, "frames")
    if data is None:
        return []
    track_number = _track_numbers()
    lines = []
    for key, entries in data.items():
        digits = key[len("frame_") :] if key.startswith("frame_") else key
        if not (digits.isascii() and digits.isdigit()):
            raise OcrError(f"{path}: frame {key!r}: expected a key like 'frame_1' or '1'")
        t = _frame_time(path, int(digits), fps, FIRST_FRAME["bovtext"], f"frame {key!r}")
        if not isinstance(entries, list):
            raise OcrError(f"{path}: frame {key!r}: expected a list of text entries")
        for index, entry in enumerate(entries):
            where = f"{path}: frame {key!r} entry {index}"
            if not isinstance(entry, dict):
                raise OcrError(f"{where}: expected an object")
            found, track = entry.get("transcription"), entry.get("tracking ID")
            if not isinstance(found, str):
                raise OcrError(f"{where}: missing string 'transcription'")
            box = _box(entry.get("points"))
            if box is None:
                raise OcrError(f"{where}: 'points' must be 8 finite numbers")
            if not isinstance(track, (int, str)) or isinstance(track, bool):
                raise OcrError(f"{where}: 'tracking ID' must be a number or a string")
            if "category" in entry and not isinstance(entry["category"], str):
                raise OcrError(f"{where}: 'category' must be a string")
            if found.strip() == BOVTEXT_ILLEGIBLE:
                continue
            lines.append(_line(found, 1.0, box, t, track_number(track)))
    lines.sort(key=lambda line: line["t"])
    return lines


# -- ICDAR 2013/2015 Text in Videos ---------------------------------------------------------
def read_icdar_ocr(path: str | Path, fps: float) -> list[Line]:
    """ICDAR 2013/2015 Text in Videos XML: `<frame ID>` (from 1) holding `<object
    Transcription ID Quality>`s of 4 `<Point x y>`; `##DONT#CARE##` (illegible) is left out.
    Other elements are ignored; a DTD is refused (no entity expansion)."""
    path = Path(path)
    data = _read_bytes(path)
    if data is None:
        return []
    _require_fps(path, fps)
    if not data.strip():
        return []
    try:  # UTF-8 whatever the declaration says; else the declared encoding (e.g. Latin-1)
        data, encoding = data.decode("utf-8-sig").encode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        encoding = None
    reader = _IcdarReader(path, fps)
    parser = expat.ParserCreate(encoding)
    parser.StartElementHandler = lambda name, attrs: reader.start(name, attrs, parser)
    parser.EndElementHandler = lambda name: reader.end(name, parser)

    def refuse_dtd(*_: Any) -> None:
        raise OcrError(f"{path}: line {parser.CurrentLineNumber}: a DTD is not accepted")

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise OcrError(
            f"{path}: line {exc.lineno}: not valid XML ({expat.errors.messages[exc.code]})"
        ) from None
    reader.lines.sort(key=lambda line: line["t"])
    return reader.lines


class _IcdarReader:
    """expat handlers building lines from `frame` / `object` / `Point` elements."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self.lines: list[Line] = []
        self.track_number = _track_numbers()
        self.t: float | None = None  # the open frame's time
        self.object: dict[str, Any] | None = None  # the open object: text, track, points, line

    def fail(self, parser: Any, message: str) -> OcrError:
        return OcrError(f"{self.path}: line {parser.CurrentLineNumber}: {message}")

    def start(self, name: str, attrs: dict[str, str], parser: Any) -> None:
        if name == "frame":
            if self.t is not None:
                raise self.fail(parser, "a <frame> inside a <frame>")
            index = attrs.get("ID", "")
            if not (index.isascii() and index.strip().isdigit()):
                raise self.fail(parser, f"<frame> needs an integer ID, got {index!r}")
            where = f"line {parser.CurrentLineNumber}"
            self.t = _frame_time(self.path, int(index), self.fps, FIRST_FRAME["icdar"], where)
        elif name == "object":
            if self.t is None or self.object is not None:
                raise self.fail(parser, "an <object> outside a <frame>, or inside an <object>")
            if "Transcription" not in attrs:
                raise self.fail(parser, "<object> needs a Transcription")
            self.object = {
                "text": attrs["Transcription"],
                "track": self.track_number(attrs.get("ID", "")),
                "points": [],
                "line": parser.CurrentLineNumber,
            }
        elif name == "Point":
            if self.object is None:
                raise self.fail(parser, "a <Point> outside an <object>")
            try:
                x, y = float(attrs["x"]), float(attrs["y"])
            except (KeyError, ValueError):
                raise self.fail(parser, "<Point> needs numbers x and y") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise self.fail(parser, "<Point> needs finite x and y")
            self.object["points"].append([x, y])

    def end(self, name: str, parser: Any) -> None:
        if name == "frame":
            self.t = None
        elif name == "object" and self.object is not None:
            item, self.object = self.object, None
            if len(item["points"]) != 4:
                raise OcrError(
                    f"{self.path}: line {item['line']}: <object> needs 4 <Point>s, "
                    f"got {len(item['points'])}"
                )
            if item["text"].strip() != ICDAR_ILLEGIBLE:
                assert self.t is not None  # an object only opens inside a frame
                self.lines.append(_line(item["text"], 1.0, item["points"], self.t, item["track"]))


# -- TextVR's Kwai_VideoOCR -----------------------------------------------------------------
def read_kwai_ocr(path: str | Path, fps: float) -> list[Line]:
    """TextVR's Kwai OCR JSON -> lines; frame indices (from 0) become seconds with the video's
    fps. A missing or empty file means no scene text. Malformed content raises `OcrError`."""
    data = _json_object(Path(path), fps, "tracks") if path else None
    if data is None:
        return []
    lines = []
    for track_id, (key, track) in enumerate(data.items()):
        where = f"{path}: track {key!r}"
        if not isinstance(track, dict) or not isinstance(track.get("text"), str):
            raise OcrError(f"{where}: missing string 'text'")
        score = track.get("score", 1.0)
        frames = track.get("tracks", {})
        if not _number(score) or not isinstance(frames, dict):  # (JSON reads NaN too)
            raise OcrError(f"{where}: 'score' must be a finite number and 'tracks' an object")
        for frame, values in frames.items():
            try:
                index = int(frame)
                box = np.asarray(values[:8], dtype=float).reshape(4, 2)
            except (TypeError, ValueError):
                raise OcrError(
                    f"{where}: frame {frame!r} needs an integer index and 8 numbers"
                ) from None
            if index < 0 or not np.isfinite(box).all():
                raise OcrError(f"{where}: frame {frame!r} has a negative index or a non-finite box")
            lines.append(_line(track["text"], score, box, index / fps, track_id))
    lines.sort(key=lambda line: line["t"])
    return lines


READERS: dict[str, Callable[[Path, float], list[Line]]] = {
    "jsonl": read_jsonl_ocr,
    "bovtext": read_bovtext_ocr,
    "icdar": read_icdar_ocr,
    "kwai": read_kwai_ocr,
}
# file names tried for a video named <stem>, in order (`annotation_paths`)
FILE_NAMES = {
    "jsonl": ("{stem}.jsonl",),
    "bovtext": ("gt_{stem}.json", "{stem}.json"),
    "icdar": ("{stem}_GT.xml", "{stem}.xml"),
    "kwai": ("{stem}.json",),
}


def read_imported_ocr(path: str | Path | None, fps: float, import_format: str) -> list[Line]:
    """The lines of one video's OCR file in `import_format` (no file: no lines)."""
    if import_format not in READERS:
        raise OcrError(f"unknown OCR import format {import_format!r}; one of {tuple(READERS)}")
    return READERS[import_format](Path(path), fps) if path else []


# -- where each video's file is -------------------------------------------------------------
def _dataset_root(work: WorkDir) -> Path:
    """The folder the work dir's dataset was read from (relative settings start there)."""
    return Path(str(work.manifest.attrs.get("root", work.path)))


def _under_root(root: Path, setting: str) -> Path:
    """A path setting: absolute as it is, relative to the dataset root."""
    path = Path(setting).expanduser()
    return path if path.is_absolute() else root / path


def video_name(video_id: str) -> str:
    """A video's id without its video suffix: `Sports/clip.mp4` -> `Sports/clip`."""
    path = PurePosixPath(video_id)
    return str(path.with_suffix("")) if path.suffix.lower() in VIDEO_SUFFIXES else video_id


def read_import_map(path: Path, base: Path) -> dict[str, Path]:
    """A two-column CSV/TSV table (video, annotation file) -> video -> file under `base`.

    A first row whose first cell is `video`, `video_id` or `id` is a header. The video is
    named by its id (`Sports/clip.mp4` or `video7010`), its id without suffix, or its file
    name; the file is relative to `base` (the import dir) and may not leave it."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise OcrError(f"{path}: the ocr.import_map table is not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OcrError(f"{path}: cannot read the ocr.import_map table ({exc})") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else ","
    table: dict[str, Path] = {}
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except csv.Error as exc:
        raise OcrError(f"{path}: not a CSV table ({exc})") from None
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if number == 1 and cells[0].lower() in ("video", "video_id", "id"):
            continue
        if len(cells) != 2 or not all(cells):
            raise OcrError(f"{path}: line {number}: expected two columns: video, annotation file")
        try:
            table[cells[0]] = base / relative_path(cells[1], f"{path}: line {number}")
        except DatasetError as exc:
            raise OcrError(str(exc)) from None
    return table


def annotation_paths(settings: OcrSettings, work: WorkDir) -> list[Path | None]:
    """Per manifest video row, the path of its OCR file (None: the format names none for it,
    as for a TextVR video without Kwai_OCR). The path need not exist (no file: no text).
    The settings the engine does not read are not looked at (`engine_in_effect`: the kwai
    engine follows Kwai_OCR whatever `ocr.import_dir` an import left), as they key nothing."""
    from pipeline.settings import engine_in_effect, import_format

    settings = engine_in_effect(settings)
    fmt = import_format(settings)
    if fmt is None:
        raise OcrError(f"the {settings.engine} engine imports no OCR files")
    root = _dataset_root(work)
    base = _under_root(root, settings.import_dir) if settings.import_dir else None
    mapped: dict[str, Path] = {}
    if settings.import_map:
        table_path = _under_root(root, settings.import_map)
        mapped = read_import_map(table_path, base or table_path.parent)
    videos = work.manifest.videos.read(["id", "path", "ocr_path", "present"])
    # a file name or stem shared by present videos of several folders names none of them
    present = videos["present"].astype(bool)
    held = [Path(str(p)) for p in videos["path"][present]]
    shared = Counter(n for path in held for n in {path.name, path.stem})
    # an id without its suffix shared by videos of one folder (clip.mp4, clip.mov): each is
    # named by its whole file name (clip.mp4.jsonl), never both by the one stem
    twins = Counter(video_name(str(i)) for i in videos["id"][present])
    paths: list[Path | None] = []
    for video_id, video_path, ocr_path, _ in zip(*videos.values(), strict=True):
        video_id, video_path = str(video_id), Path(str(video_path))
        name = video_name(video_id)
        if twins[name] > 1:
            if name in mapped and video_id not in mapped:
                raise OcrError(
                    f"ocr.import_map names {name!r}, which {twins[name]} videos share "
                    f"({video_id}, ...); name each by its id"
                )
            name = video_id
        found = _mapped(mapped, (video_id, name), (video_path.name, video_path.stem), shared)
        kwai_ocr = Path(str(ocr_path)) if fmt == "kwai" and ocr_path else None
        if found is None and kwai_ocr is not None:  # TextVR's Kwai_OCR: always followed
            found = _rebased(kwai_ocr, root / TEXTVR_OCR_DIR, base)
        elif found is None and base is not None:
            stem = PurePosixPath(name).name
            folders = [base / PurePosixPath(name).parent]
            if shared[stem] <= 1:  # a file at the import dir's top is this video's alone
                folders.append(base)
            candidates = [f / n.format(stem=stem) for f in folders for n in FILE_NAMES[fmt]]
            found = next((c for c in candidates if c.is_file()), candidates[0])
        elif found is None and fmt != "kwai":  # next to the video (kwai: no Kwai_OCR, none)
            stem = PurePosixPath(name).name  # (the file name itself where its stem is shared)
            candidates = [video_path.parent / n.format(stem=stem) for n in FILE_NAMES[fmt]]
            found = next((c for c in candidates if c.is_file()), candidates[0])
        paths.append(found)
    return paths


def require_some_file(settings: OcrSettings, work: WorkDir) -> list[Path | None]:
    """`annotation_paths`, refused (`OcrError`) where `ocr.import_dir` is no folder or no
    present video has a file: a mistyped folder, or the kwai engine on a dataset without
    Kwai_OCR, would store every video as without scene text, silently. (Only a run refuses:
    a status of a work dir whose folder moved shows its rows stale.)"""
    from pipeline.settings import engine_in_effect

    import_dir = engine_in_effect(settings).import_dir
    if import_dir:
        base = _under_root(_dataset_root(work), import_dir)
        if not base.is_dir():
            raise OcrError(f"{base}: the ocr.import_dir folder is not found")
    paths = annotation_paths(settings, work)
    present = work.manifest.videos.column("present").astype(bool)
    wanted = [p for p, here in zip(paths, present, strict=True) if here]
    if wanted and not any(p is not None and p.is_file() for p in wanted):
        named = [p for p in wanted if p is not None]
        where = f"looked for {named[0]}, ..." if named else "the dataset names no Kwai_OCR file"
        raise OcrError(
            f"no OCR file found for any of the {len(wanted)} videos ({where}); check the "
            f"{settings.engine} engine's settings (ocr.import_dir, ocr.import_map)"
        )
    return paths


def _mapped(
    table: dict[str, Path], ids: tuple[str, ...], names: tuple[str, ...], shared: Counter[str]
) -> Path | None:
    """The import map's file for a video named by one of its `ids`, or by its file name or
    stem where no other video has that name (`OcrError` where it is shared)."""
    for key in ids:
        if key in table:
            return table[key]
    for key in names:
        if key in table:
            if shared[key] > 1:
                raise OcrError(
                    f"ocr.import_map names {key!r}, which {shared[key]} videos' files share; "
                    "name each by its id (its path under the dataset root, e.g. Sports/clip.mp4)"
                )
            return table[key]
    return None


def _rebased(path: Path, under: Path, base: Path | None) -> Path:
    """`path` (a file under `under`) moved to the same place under `base` (given)."""
    if base is None or not path.is_relative_to(under):
        return path
    return base / path.relative_to(under)


# (path, size, mtime, ctime, inode) -> content key: a file is hashed again only when one of
# these changed (ctime changes on every write, even one that puts the mtime back)
_KEYS: dict[tuple[str, int, int, int, int], str] = {}


def annotation_key(path: Path | None) -> str:
    """The content key of an OCR file (size, mtime and a hash: `cache.keys.content_key`);
    '' when there is none, so a video without a file keeps its manifest key."""
    if path is None:
        return ""
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError:
        return "unreadable"  # the reader says why, for the row
    if not path.is_file():
        return "not-a-file"
    cached = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if cached not in _KEYS:
        try:
            _KEYS[cached] = content_key(path)
        except OSError:
            return "unreadable"
    return _KEYS[cached]


def annotation_keys(settings: OcrSettings, work: WorkDir) -> np.ndarray:
    """Per manifest video row, `annotation_key` of its OCR file: the part of the ocr row key
    of an importing engine (`pipeline.settings.StageGroups.row_key_part`)."""
    return np.array([annotation_key(p) for p in annotation_paths(settings, work)], dtype=object)
