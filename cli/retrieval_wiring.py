"""What the retrieval commands take from `pipeline`, handed to `retrieval` as values and
callables (retrieval never imports pipeline): a run on one split's cached features, the
window captions of some videos, a video's frames, the query encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from cache import CacheError, WorkDir
from cli.common import features
from heads.run_dir import RunDir
from pipeline.captions import window_spans
from pipeline.errors import VideoError
from pipeline.models import load_text
from pipeline.settings import PipelineSettings, StageGroups, resolve_settings
from pipeline.video import read_frames, segment_centres
from retrieval.report import Thumbnails
from retrieval.run_split import RunSplit, WindowLookup, Windows
from retrieval.search import QueryEncoder

THUMBNAILS = 4  # frames per video in the report


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


ZERO_SHOT = "zero-shot"  # the run every work dir can be searched with before any training


def open_split(work: Path, run: str, split: str, need_queries: bool = False) -> RunSplit:
    """The run's best head on the split's features for the work dir's current settings.
    The run `zero-shot` is made on first use (the frozen encoders: nothing to train)."""
    store = WorkDir(work)
    settings = resolve_settings(store.path)
    run_dir = RunDir(store.path, run)
    if run != ZERO_SHOT or run_dir.path.exists():
        run_dir.require()  # a mistyped --run: said before any features are read
    data = features(store, split, settings=settings)
    if not run_dir.path.exists():
        from heads.config import HeadSettings, RunConfig, TrainSettings
        from heads.train import train

        train(RunConfig(HeadSettings(kind=ZERO_SHOT), TrainSettings(epochs=0)), data, run_dir)
    return RunSplit.open(
        run_dir,
        split,
        data,
        store.manifest.videos.read(["key", "path"]),
        StageGroups.keys(settings),
        window_lookup(store, settings),
        need_queries,
    )


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
    """The work dir's text model, loaded on the first query (an empty query loads nothing)."""
    name = resolve_settings(WorkDir(work).path).encode.text_model
    return lambda texts: load_text(name)(texts)
