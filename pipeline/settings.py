"""The pipeline's settings and the one chain "settings -> stage groups".

One dataclass per stage, one TOML file for all of them. Resolution order, later wins:
defaults < the work dir's `settings.toml` (what the stages of this work dir last ran with)
< `--config FILE` < `--set section.key=value`. Every stage command saves the resolved
settings back to `W/settings.toml`, so `tcd ocr --engine kwai` followed by `tcd caption`
captions the Kwai OCR without repeating the engine.

`StageGroups` is the only place that knows which settings key which stage group and which
group feeds which: stages, the trainer's feature loading and `tcd cache status` all ask it.
This module imports neither torch nor transformers, so light commands stay light.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cache import SettingsError, Shard, StageGroup, TcdError, WorkDir, settings_key
from cache.atomic import atomic_write
from cache.keys import added_setting, as_written_before, directory_key, value_before
from cache.settings import check_setting as _check
from cache.settings import dump_toml, load_settings, read_toml, to_dict

WORK_SETTINGS = "settings.toml"


class OcrEngine(StrEnum):
    """The OCR engines `ocr.engine` names (the CLI's `--engine` choices)."""

    rapidocr = "rapidocr"
    paddleocr = "paddleocr"
    kwai = "kwai"  # = `import` with ocr.import_format = "kwai"; kept for its cache key
    import_ = "import"


class ImportFormat(StrEnum):
    """The formats the `import` engine reads (`ocr.import_format`; `pipeline.ocr_import`)."""

    jsonl = "jsonl"
    bovtext = "bovtext"
    icdar = "icdar"
    kwai = "kwai"


REUSE_MODES = ("off", "frame", "boxes", "frame+boxes")


@dataclass(frozen=True)
class OcrSettings:
    engine: Literal["rapidocr", "paddleocr", "kwai", "import"] = "rapidocr"  # = OcrEngine's values
    fps: float = 2.0  # frames read per second of video
    max_frames: int = 64  # cap per video (long videos are sampled uniformly)
    det_limit_side: int = 256  # rapidocr: upscale the short side to at least this
    paddle_det_dir: str = ""  # paddleocr: local model dirs (the hub is unreachable offline)
    paddle_rec_dir: str = ""
    # The temporal gate (`pipeline.ocr_reuse`): "off" reads every sampled frame; "frame"
    # reuses the last read frame's lines while no 8x8 block of the 64x36 grey thumbnail has
    # changed by more than reuse_frame_diff; "boxes" detects every frame and recognises only
    # the boxes that are new (IoU < reuse_iou with the previous frame's) or changed (some
    # character-sized patch of the aligned crop differs by more than reuse_diff);
    # "frame+boxes" also skips the detector on frames "frame" calls unchanged. reuse_shift:
    # how many pixels each patch may move beyond the crop's alignment (a drifting text lands
    # on the pixel grid glyph by glyph). reuse_edge: a box on the frame's edge is compared up
    # to the edge (a text entering or leaving the frame changes there, outside the inset
    # crop). reuse_frame_texts: "frame+boxes" skips the detector only where the last
    # detected boxes also pass the box test (a changed digit hardly moves a thumbnail block).
    # reuse_regions: "frame+boxes" runs the detector only on the changed parts of a frame
    # (changed thumbnail blocks, boxes failing the box test) and keeps the last boxes elsewhere.
    # Differences are mean absolute differences of pixels in [0, 1]. The defaults are
    # the measured best gate (README: the OCR gate); `before` is what ran before a setting
    # existed, which older work dirs' keys and saved settings mean. A mode's key holds only
    # the settings it reads (`gate_in_effect`).
    reuse: Literal["off", "frame", "boxes", "frame+boxes"] = added_setting(
        "frame+boxes", before="off"
    )
    reuse_iou: float = added_setting(0.7)
    reuse_diff: float = added_setting(0.15)
    reuse_frame_diff: float = added_setting(0.05)
    reuse_shift: int = added_setting(1, before=0)
    reuse_edge: bool = added_setting(True, before=False)
    reuse_frame_texts: bool = added_setting(True, before=False)
    reuse_regions: bool = added_setting(True, before=False)
    # "frame", "frame+boxes": frame pixels a thumbnail block covers a side (the thumbnail is
    # the frame at 8 / reuse_block_px of its size); 0: the fixed 64x36 thumbnail of earlier
    # versions, whose blocks grow with the frame (240 pixels wide at 1080p)
    reuse_block_px: int = added_setting(48, before=0)
    rec_batch: int = added_setting(6)  # rapidocr: crops per recogniser call (its rec_batch_num)
    # The `import` engine (`pipeline.ocr_import`): OCR files of this format, one per video,
    # found under import_dir by the video's name or through import_map, a two-column table
    # (video, annotation file). Relative paths are relative to the dataset root; "" for
    # import_dir means next to the videos (or, for kwai, TextVR's Kwai_OCR paths).
    import_format: Literal["jsonl", "bovtext", "icdar", "kwai"] = added_setting("jsonl")
    import_dir: str = added_setting("")
    import_map: str = added_setting("")

    def __post_init__(self) -> None:
        _check("ocr.fps", math.isfinite(self.fps) and self.fps > 0, "> 0", self.fps)
        _check("ocr.max_frames", self.max_frames >= 1, ">= 1", self.max_frames)
        _check("ocr.det_limit_side", self.det_limit_side >= 1, ">= 1", self.det_limit_side)
        _check("ocr.reuse", self.reuse in REUSE_MODES, f"one of {REUSE_MODES}", self.reuse)
        _check("ocr.reuse_iou", 0 < self.reuse_iou <= 1, "in (0, 1]", self.reuse_iou)
        _check("ocr.reuse_diff", 0 <= self.reuse_diff <= 1, "in [0, 1]", self.reuse_diff)
        frame_diff = self.reuse_frame_diff
        _check("ocr.reuse_frame_diff", 0 <= frame_diff <= 1, "in [0, 1]", frame_diff)
        _check("ocr.reuse_shift", 0 <= self.reuse_shift <= 4, "in [0, 4]", self.reuse_shift)
        _check("ocr.rec_batch", self.rec_batch >= 1, ">= 1", self.rec_batch)
        block = self.reuse_block_px
        _check("ocr.reuse_block_px", block == 0 or 8 <= block <= 1024, "0 or in 8..1024", block)
        formats = tuple(ImportFormat)
        fmt = self.import_format
        _check("ocr.import_format", fmt in formats, f"one of {formats}", fmt)


@dataclass(frozen=True)
class CaptionSettings:
    frames: int = 12  # T: captions (and encoded frames) per video
    xi: float = 1.0  # window length in units of duration / T
    min_score: float = 0.5
    separator: str = ", "
    max_instances: int = 200
    # a line on the edge two windows share (at xi = 1 every window's end is the next one's
    # start): in the next window only ("next"), or in both ("both", earlier versions)
    window_edges: Literal["next", "both"] = added_setting("next", before="both")
    # within a window and a time: boxes on one line read left to right ("lines"), or by top
    # edge then left edge ("top", earlier versions)
    reading_order: Literal["lines", "top"] = added_setting("lines", before="top")
    # the lines of one track (an importer's track id) are one text, its best-scored read
    merge_tracks: bool = added_setting(True, before=False)

    def __post_init__(self) -> None:
        _check("captions.frames", 1 <= self.frames <= 1024, "in 1..1024", self.frames)
        _check("captions.xi", math.isfinite(self.xi) and self.xi > 0, "> 0", self.xi)
        _check("captions.min_score", 0 <= self.min_score <= 1, "in [0, 1]", self.min_score)
        _check("captions.max_instances", self.max_instances >= 0, ">= 0", self.max_instances)
        for name, allowed in (
            ("window_edges", ("next", "both")),
            ("reading_order", ("lines", "top")),
        ):
            given = getattr(self, name)
            _check(f"captions.{name}", given in allowed, f"one of {allowed}", given)


@dataclass(frozen=True)
class EncodeSettings:
    vision_model: str = "clip-tiny-random"  # real runs: openai/clip-vit-base-patch32
    text_model: str = "minilm"

    def __post_init__(self) -> None:
        _check("encode.vision_model", bool(self.vision_model.strip()), "a name", self.vision_model)
        _check("encode.text_model", bool(self.text_model.strip()), "a name", self.text_model)


@dataclass(frozen=True)
class FrameSettings:
    """What keys the frames group: the vision model (with its files, where it is a local
    directory: `model_files_key`) and T."""

    model: str
    frames: int
    model_files: str = added_setting("")


@dataclass(frozen=True)
class OcrSampling:
    """What keys the ocr group of an engine that decodes frames: its settings and T, whose
    segment centres are among the times it reads (`pipeline.ocr.ocr_sample_times`)."""

    ocr: OcrSettings
    frames: int
    model_files: str = added_setting("")  # paddleocr's model folders (`model_files_key`)


@dataclass(frozen=True)
class OcrImport:
    """What keys the ocr group of the `import` engine: where its files are and their format.
    (The kwai engine keeps its old key: its full `OcrSettings`.) Each row's key adds its
    file's content key (`StageGroups.row_key_part`), so an edited file recomputes its video."""

    format: str
    dir: str
    map: str


@dataclass(frozen=True)
class TextSettings:
    """What keys the ocr_text and queries groups: the text model (with its files, where it is
    a local directory: `model_files_key`)."""

    model: str
    model_files: str = added_setting("")


@dataclass(frozen=True)
class PipelineSettings:
    ocr: OcrSettings = field(default_factory=OcrSettings)
    captions: CaptionSettings = field(default_factory=CaptionSettings)
    encode: EncodeSettings = field(default_factory=EncodeSettings)


def resolve_settings(
    work: Path, config: Path | None = None, overrides: Sequence[str] = ()
) -> PipelineSettings:
    """Settings for a stage command on work dir `work` (see the module docstring)."""
    saved = work / WORK_SETTINGS
    try:
        return load_settings(PipelineSettings, [config], overrides, base=read_saved(saved))
    except SettingsError as exc:
        layers = [saved if saved.exists() else None, config]
        sources = [str(p) for p in layers if p is not None] + [f"--set {o}" for o in overrides]
        raise SettingsError(f"{exc} (settings from {', '.join(sources) or 'defaults'})") from None


def overrides_from_saved(work: Path, settings: PipelineSettings) -> list[str]:
    """`section.key=value` (a TOML value) for each setting in which `settings` differs from
    those saved in work dir `work`: the `--set`s that give another command these settings
    (a stage refused for want of its upstream names them in the upstream's command, which
    would otherwise run on the saved settings and find another group up to date)."""

    def flat(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
        for key, value in data.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    saved = dict(flat(to_dict(resolve_settings(work))))
    return [
        f"{name}={dump_toml({'v': value}).split('=', 1)[1].strip()}"
        for name, value in flat(to_dict(settings))
        if value is not None and saved.get(name) != value
    ]


def read_saved(path: Path) -> dict[str, Any] | None:
    """A work dir's saved settings as the version that wrote them ran: a setting added since
    takes its value before it existed (`cache.keys.as_written_before`), except a gate setting
    the saved `ocr.reuse` does not read, which takes today's default (no rule of it ran, so
    turning the gate on there gets today's rule). None when nothing was saved."""
    if not path.exists():
        return None
    written = read_toml(path)
    data = as_written_before(PipelineSettings, written)
    ocr, wrote = data.get("ocr", {}), written.get("ocr", {})
    reads = GATE_READS.get(ocr.get("reuse"), ())
    for name in GATE_READS["frame+boxes"]:
        if name not in wrote and name not in reads:
            ocr.pop(name, None)
    return data


def save_settings(work: Path, settings: PipelineSettings) -> None:
    header = "# settings the stages of this work dir last ran with\n"
    atomic_write(work / WORK_SETTINGS, header + dump_toml(to_dict(settings)))


# -- the chain settings -> stage groups -----------------------------------------------------
STAGES = ("ocr", "captions", "frames", "ocr_text", "queries")
# how a row that failed because its upstream row had failed is recorded (`Upstream.check`):
# redone once that upstream row is done (`StageGroups.pending`)
UPSTREAM_FAILED = "upstream failed: "
# the groups each stage command (`tcd ocr`, `tcd caption`, `tcd encode`) computes
COMMAND_GROUPS = {
    "ocr": ("ocr",),
    "caption": ("captions",),
    "encode": ("frames", "ocr_text", "queries"),
}


def samples_frames(ocr: OcrSettings) -> bool:
    """Whether the engine decodes frames itself (at `ocr.fps` plus the T segment centres),
    so that its group depends on T; `import` and `kwai` read lines found elsewhere and do not."""
    return import_format(ocr) is None


def import_format(ocr: OcrSettings) -> str | None:
    """The format an importing engine reads (`kwai` for the kwai engine); None for an engine
    that decodes frames."""
    if ocr.engine == OcrEngine.kwai:
        return ImportFormat.kwai.value
    if ocr.engine == OcrEngine.import_:
        return ocr.import_format
    return None


# the gate settings each `ocr.reuse` mode reads (`pipeline.ocr_reuse`)
BOX_GATE = ("reuse_iou", "reuse_diff", "reuse_shift", "reuse_edge")
GATE_READS = {
    "off": (),
    "frame": ("reuse_frame_diff", "reuse_block_px"),
    "boxes": BOX_GATE,
    "frame+boxes": (
        "reuse_frame_diff",
        "reuse_block_px",
        "reuse_frame_texts",
        "reuse_regions",
        *BOX_GATE,
    ),
}


WHOLE_FRAME_ENGINES = ("paddleocr",)  # no separate detection: "frame+boxes" is "frame"


def gate_mode(ocr: OcrSettings) -> str:
    """The gate that runs: `ocr.reuse`, except "frame+boxes" on a whole-frame engine, which
    is "frame" (`pipeline.ocr.make_reader`)."""
    if ocr.reuse == "frame+boxes" and ocr.engine in WHOLE_FRAME_ENGINES:
        return "frame"
    return ocr.reuse


def gate_in_effect(ocr: OcrSettings) -> OcrSettings:
    """`ocr` naming the gate that runs (`gate_mode`), with the gate settings it does not read
    at their values before they existed, so they drop out of the key: e.g. `reuse_shift`
    does not key an ungated group, which is the group earlier versions built. (A group built
    with such a setting changed, which then keyed it, is built again once.)"""
    gate = [f for f in fields(OcrSettings) if f.name in GATE_READS["frame+boxes"]]
    mode = gate_mode(ocr)
    unread = {f.name: value_before(f) for f in gate if f.name not in GATE_READS[mode]}
    return replace(ocr, reuse=mode, **unread)


# the engine settings each OCR engine reads (the sampling engines also read fps, max_frames
# and the gate); the others drop out of its key (`engine_in_effect`)
ENGINE_READS = {
    "rapidocr": ("fps", "max_frames", "det_limit_side", "rec_batch"),
    "paddleocr": ("fps", "max_frames", "paddle_det_dir", "paddle_rec_dir"),
    "kwai": (),
    "import": ("import_format", "import_dir", "import_map"),
}
ENGINE_SETTINGS = sorted({name for reads in ENGINE_READS.values() for name in reads})


def engine_in_effect(ocr: OcrSettings) -> OcrSettings:
    """`ocr` with the engine settings its engine does not read at their defaults (their
    values before they existed), so they do not key its group: a kwai group is not rebuilt
    because `ocr.import_dir` was set for another engine, nor a rapidocr one because of the
    paddleocr model folders."""
    unread = {
        f.name: value_before(f)
        for f in fields(OcrSettings)
        if f.name in ENGINE_SETTINGS and f.name not in ENGINE_READS[ocr.engine]
    }
    return replace(ocr, **unread)


def model_files_key(*models: str) -> str:
    """What keys the files of `models` (names or folders): for each local directory among
    them, its `cache.keys.directory_key`, so a model saved anew into the same folder opens
    new groups; '' where none is one (a built-in or hub name keys by its name alone, and
    groups keyed before this existed keep their keys)."""
    keys = []
    for model in models:
        if model and Path(model).is_dir():
            try:
                keys.append(directory_key(model))
            except OSError as exc:
                raise SettingsError(f"cannot read the model folder {model}: {exc}") from None
    return "-".join(keys)


def _ocr_keyed_by(ocr: OcrSettings, frames: int) -> Any:
    """What keys the ocr group: see `OcrSampling` and `OcrImport`."""
    ocr = engine_in_effect(ocr)
    if samples_frames(ocr):
        if ocr.max_frames <= frames:  # the T segment centres alone (`ocr_sample_times`):
            # every such cap and rate reads those frames, keyed as the cap T at the default
            # rate (not the default cap, which reads the rate's samples too)
            ocr = replace(ocr, fps=OcrSettings().fps, max_frames=frames)
        paddle = model_files_key(ocr.paddle_det_dir, ocr.paddle_rec_dir)
        return OcrSampling(gate_in_effect(ocr), frames, paddle)
    if ocr.engine == OcrEngine.kwai:  # it reads no frames, so no gate keys it
        return gate_in_effect(replace(ocr, reuse="off"))  # the key kwai work dirs were built with
    return OcrImport(ocr.import_format, ocr.import_dir, ocr.import_map)


def _chain(settings: PipelineSettings) -> list[tuple[str, Any, str | None, str]]:
    """(stage, the settings that key it, the stage it reads, row kind), upstream first.

    T (`captions.frames`) keys the ocr group of an engine that decodes frames (it reads the T
    segment centres too), while `captions.xi` keys only the captions group and, through its
    key, the ocr_text group."""
    encode = settings.encode
    text = TextSettings(encode.text_model, model_files_key(encode.text_model))
    ocr = settings.ocr
    return [
        ("ocr", _ocr_keyed_by(ocr, settings.captions.frames), None, "videos"),
        ("captions", settings.captions, "ocr", "videos"),
        (
            "frames",
            FrameSettings(
                encode.vision_model, settings.captions.frames, model_files_key(encode.vision_model)
            ),
            None,
            "videos",
        ),
        ("ocr_text", text, "captions", "videos"),
        ("queries", text, None, "captions"),
    ]


class StageGroups:
    """The cache groups of one work dir under one set of settings.

    Each group is opened (created when missing) on first use, so `tcd ocr` never creates the
    groups of the stages after it: `StageGroups.resolve(work, settings).captions`.
    """

    # one attribute per stage of STAGES, opened by `__getattr__` -> `group(stage)`
    ocr: StageGroup
    captions: StageGroup
    frames: StageGroup
    ocr_text: StageGroup
    queries: StageGroup

    def __init__(self, work: WorkDir, settings: PipelineSettings):
        self.work = work
        self.settings = settings
        self._opened: dict[str, StageGroup] = {}

    @classmethod
    def resolve(cls, work: WorkDir, settings: PipelineSettings) -> StageGroups:
        """The stage groups these settings use in `work`."""
        return cls(work, settings)

    @staticmethod
    def keys(settings: PipelineSettings) -> dict[str, str]:
        """Stage -> group key, without opening or creating anything (for `cache status`)."""
        keys: dict[str, str] = {}
        for stage, keyed_by, upstream, _ in _chain(settings):
            keys[stage] = settings_key(keyed_by, upstream=keys[upstream] if upstream else None)
        return keys

    def __getattr__(self, stage: str) -> StageGroup:
        if stage not in STAGES:
            raise AttributeError(f"{type(self).__name__} has no attribute {stage!r}")
        return self.group(stage)

    def group(self, stage: str) -> StageGroup:
        """The group of `stage` (one of `STAGES`), opened or created."""
        if stage not in self._opened:
            keyed_by, upstream, rows = self.link(stage)
            up = self.keys(self.settings)[upstream] if upstream else None
            self._opened[stage] = self.work.stage(
                stage, keyed_by, upstream=up, rows=rows, row_key_part=self.row_key_part(stage)
            )
        return self._opened[stage]

    def row_key_part(self, stage: str) -> Callable[[], np.ndarray] | None:
        """What keys a row of `stage` besides its manifest key (`StageGroup.expected`), or
        None: for the ocr stage of an importing engine, each video's OCR file's content key
        (`pipeline.ocr_import.annotation_keys`), so adding or editing a file recomputes that
        video; the stages reading it (captions, then ocr_text) inherit the part, so the new
        lines reach that video's captions and their encoding too."""
        _, upstream, _ = self.link(stage)
        if upstream is not None:
            return self.row_key_part(upstream)
        if stage != "ocr" or samples_frames(self.settings.ocr):
            return None
        from pipeline.ocr_import import annotation_keys  # file lookups: only for importers

        ocr, work = self.settings.ocr, self.work
        return lambda: annotation_keys(ocr, work)

    def reported_part(self, stage: str) -> tuple[Callable[[], np.ndarray] | None, str]:
        """`row_key_part(stage)` evaluated once, for the commands that only report (`tcd cache
        status`, `tcd show`): where it cannot be (an import map moved away), None and why,
        and the rows are then checked by their manifest keys alone (a run refuses)."""
        part = self.row_key_part(stage)
        if part is None:
            return None, ""
        try:
            values = part()
        except TcdError as exc:
            return None, str(exc)
        return (lambda: values), ""

    def pending(self, stage: str, retry_failed: bool = False) -> np.ndarray:
        """Rows the existing group of `stage` would compute: its own pending rows
        (`StageGroup.pending`), and the rows it failed only because their upstream row had
        failed (recorded with `UPSTREAM_FAILED`) once that upstream row is done."""
        group = self.find(stage)
        assert group is not None, f"no {stage} group yet"
        states = group.row_states()
        todo = group.pending(retry_failed, states)
        _, upstream, _ = self.link(stage)
        source = self.find(upstream) if upstream is not None else None
        failed = np.flatnonzero(states["failed"]) if not retry_failed else []
        if source is None or not len(failed):
            return todo
        upstream_done = source.row_states()["done"]
        errors = group.group["error"]
        redo = [
            row
            for row in failed
            if row < len(upstream_done)
            and upstream_done[row]
            and str(errors[row]).startswith(UPSTREAM_FAILED)
        ]
        return np.union1d(todo, np.asarray(redo, dtype=np.int64)).astype(np.int64)

    def todo(self, stage: str, retry_failed: bool = False, shard: Shard | None = None) -> int:
        """How many rows `stage` would compute (of `shard`'s rows); creates nothing."""
        group = self.find(stage)
        if group is not None:
            rows = self.pending(stage, retry_failed)
        else:
            _, _, kind = self.link(stage)
            rows = np.flatnonzero(self.work.manifest.table(kind).column("present"))
        return len(shard.select(rows) if shard is not None else rows)

    def find(self, stage: str) -> StageGroup | None:
        """The group of `stage` if it exists; never creates it."""
        return self._opened.get(stage) or self.work.find_stage(
            stage, self.keys(self.settings)[stage], self.row_key_part(stage)
        )

    def link(self, stage: str) -> tuple[Any, str | None, str]:
        """(the settings that key `stage`, the stage it reads or None, its row kind)."""
        for name, keyed_by, upstream, rows in _chain(self.settings):
            if name == stage:
                return keyed_by, upstream, rows
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
