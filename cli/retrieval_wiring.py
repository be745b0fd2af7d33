"""What the retrieval commands take from `pipeline`, handed to `retrieval` as values and
callables (retrieval never imports pipeline): a run on one split's cached features, the
window captions of some videos, a video's frames, the query encoder, why videos have no
features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cache import CacheError, WorkDir
from cli.common import features, present_splits, warn
from cli.video_details import VIDEO_STAGES
from heads.checkpoint import CheckpointError
from heads.data import Features
from heads.run_dir import ABLATION_RUN, RunDir
from pipeline.captions import window_spans
from pipeline.datasets import COLLECTION_SPLIT
from pipeline.errors import VideoError
from pipeline.models import load_text
from pipeline.settings import WORK_SETTINGS, PipelineSettings, StageGroups, resolve_settings
from pipeline.video import read_frames, segment_centres
from retrieval.report import NoFeatures, Thumbnails
from retrieval.run_split import RunSplit, WindowLookup, Windows
from retrieval.search import QueryEncoder

THUMBNAILS = 4  # frames per video in the report


ZERO_SHOT = "zero-shot"  # the run every work dir can be searched with before any training


def open_split(
    work: Path,
    run: str,
    split: str,
    need_queries: bool = False,
    settings: PipelineSettings | None = None,
) -> RunSplit:
    """The run's best head on the split's features for `settings` (by default the work dir's
    current ones). The run `zero-shot` is made on first use (the frozen encoders: nothing to
    train), and made again when its features change. `run` may also be the path of a run
    folder of another work dir with the same encoders (`run_folder`); its folder is then only
    read (its index is built in memory, its metrics are not saved)."""
    store = WorkDir(work)
    settings = settings or resolve_settings(store.path)
    run_dir, foreign = named_run(store, run, settings)
    data = features(store, split, settings=settings, require_queries=need_queries)
    ready_run(run_dir, run, foreign, data)
    return RunSplit.open(
        run_dir,
        split,
        data,
        _videos_by_row_key(store, settings),
        StageGroups.keys(settings),
        window_lookup(store, settings),
        need_queries,
        read_only=foreign,
    )


def named_run(store: WorkDir, run: str, settings: PipelineSettings) -> tuple[RunDir, bool]:
    """The run `--run` names (a name in the work dir, or a path: `run_folder`) and whether it
    is another work dir's, refused at once when it holds no run (a mistyped name is said
    before any features are read); `zero-shot` may not exist yet (`ready_run` makes it)."""
    run_dir, foreign = run_folder(store.path, run, settings)
    zero_shot = run_dir.name == ZERO_SHOT and not foreign  # (by name or by its path)
    if not zero_shot or run_dir.config_path.exists():  # (a folder left half-made is remade)
        run_dir.require()
    return run_dir, foreign


def ready_run(run_dir: RunDir, run: str, foreign: bool, data: Features) -> None:
    """Before `data` is scored with the run: make the zero-shot run for these features, or
    warn when a trained run was trained on other ones."""
    if run_dir.name == ZERO_SHOT and not foreign:
        _make_zero_shot(run_dir, data)
    else:
        _warn_if_trained_on_others(run_dir, run, data.source, foreign)


def _make_zero_shot(run_dir: RunDir, data: Features) -> None:
    """Make the zero-shot run on `data`'s features where it is missing or was made on others
    (their encoders' widths may not fit its checkpoint): nothing is trained, so nothing is
    lost. A run the user trained under that name is left alone."""
    from heads.config import HeadSettings, RunConfig, TrainSettings
    from heads.train import train

    if run_dir.config_path.exists() and run_dir.config().head.kind != ZERO_SHOT:
        return
    # (made on these features already: `train` sees it finished and writes nothing)
    train(RunConfig(HeadSettings(kind=ZERO_SHOT), TrainSettings(epochs=0)), data, run_dir)


def _warn_if_trained_on_others(
    run_dir: RunDir, run: str, source: dict[str, str], foreign: bool
) -> None:
    """One warning line when the run was trained on other feature groups than `source`
    (`foreign`: a run of another work dir, whose settings differ from this one's)."""
    trained_on = run_dir.trained_on()
    if trained_on is not None and trained_on != source:
        groups = ", ".join(sorted(s for s in source if trained_on.get(s) != source[s]))
        if foreign:
            warn(
                f"run {run} of another work dir was trained on other features than this work "
                f"dir's ({groups} groups: their settings differ); its scores here are not "
                "those it had there"
            )
            return
        warn(
            f"run {run} was trained on other features than these ({groups} groups: the "
            "settings changed since); its scores are not what they were: train it again on "
            "these (tcd train)"
        )


def _videos_by_row_key(store: WorkDir, settings: PipelineSettings) -> dict[str, np.ndarray]:
    """The manifest's `key` and `path` columns, each key that of the row the text features
    were read from: with an importing OCR engine it also holds the video's OCR file key, so
    an edited OCR file makes a saved index stale."""
    videos = store.manifest.videos.read(["key", "path"])
    text_rows = StageGroups.resolve(store, settings).find("ocr_text")
    if text_rows is not None:
        videos["key"] = text_rows.expected()[0]
    return videos


def is_run_path(run: str) -> bool:
    """Whether `--run` names a folder path rather than a run of this work dir (`NAME`, or an
    ablation run `ablate/VARIANT/seedS`)."""
    if ABLATION_RUN.fullmatch(run):
        return False
    return "/" in run or "\\" in run or run in (".", "..") or run.startswith("~")


def run_folder(work: Path, run: str, settings: PipelineSettings) -> tuple[RunDir, bool]:
    """(the run, whether it belongs to another work dir). A path names a run folder
    `W2/runs/NAME` (or `W2/runs/ablate/VARIANT/seedS`); one of this work dir is its run by
    name, one of another work dir is accepted only when W2's encoders (its settings.toml)
    are this work dir's, since the head was trained on W2's features."""
    if not is_run_path(run):
        return RunDir.named(work, run), False
    path = Path(run).expanduser().resolve()
    own = RunDir.of(path)
    if own is not None and own.work == Path(work).resolve():
        return RunDir.named(work, own.name), False
    run_dir = RunDir.at(path)
    run_dir.require(
        f"--run {run} is read from the current directory, not the work dir: name a trained "
        "run folder W2/runs/NAME"
    )
    trained_on = RunDir.work_of(path)
    if trained_on is None or not (trained_on / WORK_SETTINGS).exists():
        raise CheckpointError(
            f"{path}: not a run folder of a work dir (W/runs/NAME with W/{WORK_SETTINGS}), so "
            "its encoders are unknown; name a run folder inside a work dir"
        )
    theirs = resolve_settings(trained_on).encode
    ours = settings.encode
    pair = (theirs.vision_model, theirs.text_model)
    if pair != (ours.vision_model, ours.text_model):
        raise CheckpointError(
            f"run {path} was trained on features of vision model {theirs.vision_model!r} and "
            f"text model {theirs.text_model!r} ({trained_on}); {work} encodes with "
            f"{ours.vision_model!r} and {ours.text_model!r}; encode this work dir with the "
            "run's models, or train a run on it"
        )
    return run_dir, True


def window_lookup(store: WorkDir, settings: PipelineSettings | None = None) -> WindowLookup:
    """Manifest rows -> their window captions and spans (`pipeline.captions.window_spans`,
    clipped to the video)."""
    settings = settings or resolve_settings(store.path)
    found = StageGroups.resolve(store, settings).find("captions")  # a reader creates nothing
    if found is None:
        raise CacheError(
            f"{store.path}: no window captions for the current settings; run "
            f"`tcd caption --work {store.path}` first"
        )
    captions = found.group
    durations = store.manifest.videos.column("duration")

    def windows(rows: np.ndarray) -> Windows:
        rows = np.asarray(rows, dtype=np.int64)
        duration = durations[rows][:, None]
        starts, ends = window_spans(duration, settings.captions)
        selection = captions["captions"].get_orthogonal_selection((rows, slice(None)))
        chosen = np.asarray(selection, dtype=object)
        return Windows(chosen, np.maximum(starts, 0.0), np.minimum(ends, duration))

    return windows


def thumbnails(work: Path) -> Thumbnails:
    """Manifest row -> a few frames of the video; none when it cannot be decoded."""
    videos = WorkDir(work).manifest.videos.read(["path", "duration"])

    def frames_of(row: int) -> list[np.ndarray]:
        times = segment_centres(float(videos["duration"][row]), THUMBNAILS)
        try:
            batches = read_frames(str(videos["path"][row]), times, THUMBNAILS)
            return [frame for _, batch in batches for frame in batch]
        except (VideoError, OSError):  # a broken video shows no frames; the page still renders
            return []

    return frames_of


def query_encoder(work: Path) -> QueryEncoder:
    """The work dir's text model, loaded on the first query and kept for the next ones (an
    empty query loads nothing)."""
    name = resolve_settings(WorkDir(work).path).encode.text_model
    loaded: list = []

    def encode(texts: list[str]) -> np.ndarray:
        if not loaded:
            loaded.append(load_text(name))
        return loaded[0](texts)

    return encode


def default_split(work: Path) -> str:
    """The split search and serve use when none is named: `all` where the work dir holds a
    collection read without captions, else `test`."""
    return COLLECTION_SPLIT if COLLECTION_SPLIT in present_splits(WorkDir(work)) else "test"


def frame_at(path: str | Path, seconds: float) -> np.ndarray | None:
    """The video's frame nearest to `seconds` (uint8 RGB), or None when it cannot be decoded."""
    try:
        for _, batch in read_frames(str(path), np.array([max(seconds, 0.0)]), 1):
            return batch[0]
    except (VideoError, OSError):
        return None
    return None


def no_features(
    work: Path, data: Features, settings: PipelineSettings | None = None
) -> dict[str, NoFeatures]:
    """Why each video of `data` without features has none, by video id: the first of its
    stages (pipeline order) that failed for it, with the group's error message, else the
    first not done for it. Each stage's group is read once; nothing is created."""
    if not data.missing or data.rows is None:
        return {}
    store = WorkDir(work)
    groups = StageGroups.resolve(store, settings or resolve_settings(store.path))
    position = {video: i for i, video in enumerate(data.video_ids)}
    rows = {video: int(data.rows[position[video]]) for video in data.missing}
    failed: dict[str, NoFeatures] = {}
    not_done: dict[str, NoFeatures] = {}
    for stage in VIDEO_STAGES:
        group = groups.find(stage)
        if group is None:
            for video in rows:
                not_done.setdefault(video, NoFeatures(stage, "not run"))
            continue
        states = group.row_states()
        for video, row in rows.items():
            state = next((name for name, mask in states.items() if mask[row]), "pending")
            if state == "failed" and video not in failed:
                failed[video] = NoFeatures(stage, state, str(group.group["error"][row]))
            elif state != "done":
                not_done.setdefault(video, NoFeatures(stage, state))
    unknown = NoFeatures("features", "missing")
    return {video: failed.get(video) or not_done.get(video, unknown) for video in rows}
