"""What several commands share: option types and the one wiring "work dir + split -> cached
features" (pipeline's stage groups handed to heads' loader, which never imports pipeline).

Option types import neither torch nor transformers, so light commands stay light; the features
loader imports `heads` only when called.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cache import TcdError, WorkDir
from pipeline.settings import PipelineSettings, StageGroups, resolve_settings

if TYPE_CHECKING:
    from heads.data import Features


def flag(*names: str, help: str) -> Any:
    """A boolean option: in --help without typer's `<bool>` type, since it takes no value."""
    return typer.Option(*names, help=help, metavar="")


Work = Annotated[Path, typer.Option("--work", "-w", help="Work directory (made by `tcd data`).")]
Config = Annotated[
    Path | None, typer.Option(help="TOML settings file (see configs/pipeline.toml).")
]
Set = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one setting, e.g. captions.xi=0.5 (repeatable)."),
]
Quiet = Annotated[bool, flag("--quiet", "-q", help="No progress bar.")]
Run = Annotated[str, typer.Option(help="Run name under W/runs/.")]
Split = Annotated[str, typer.Option(help="Split to use (train or test).")]
Budget = Annotated[
    float, typer.Option(help="Above this many GB of features, memory-map them instead.")
]


def warn(message: str) -> None:
    """One `warning: ...` line on stderr."""
    typer.echo(f"warning: {message}", err=True)


def present_splits(store: WorkDir) -> list[str]:
    """The splits of the manifest's present videos, sorted."""
    videos = store.manifest.videos.read(["split", "present"])
    return sorted(set(videos["split"][videos["present"]].tolist()))


def require_split(store: WorkDir, split: str) -> None:
    """Refuse `--split` naming no split of the work dir (before any work is done)."""
    splits = present_splits(store)
    if split not in splits:
        raise TcdError(
            f"split {split!r} has no videos in {store.path}; its splits: "
            f"{', '.join(splits) or 'none'} (choose one with --split)"
        )


FEATURE_STAGES = ("frames", "ocr_text", "queries")  # the groups `features` reads


def features(
    work: WorkDir,
    split: str,
    memory_budget_gb: float = 8.0,
    settings: PipelineSettings | None = None,
    require_queries: bool = True,
) -> Features:
    """The split's cached features for `settings` (default: the work dir's current ones);
    `require_queries`: see `load_features`.

    Above the memory budget they are memory-mapped from `W/tmp/features/`. Frames and texts
    share one space when one two-tower model (a CLIP directory) encodes both.
    """
    from heads.data import FeatureError, load_features
    from pipeline.captions import window_sample_share

    settings = settings or resolve_settings(work.path)
    groups = StageGroups.resolve(work, settings)
    found = {stage: groups.find(stage) for stage in FEATURE_STAGES}  # a reader creates none
    for stage, group in found.items():
        if group is None:
            raise FeatureError.no_group(stage, StageGroups.keys(settings)[stage])
    data = load_features(
        work.manifest,
        *found.values(),
        split,
        memory_budget_gb * 1e9,
        work.spill_dir,
        shared_space=_same_model(settings.encode.vision_model, settings.encode.text_model),
        require_queries=require_queries,
    )
    captions = groups.find("captions")
    data.window_sample_share = window_sample_share(captions) if captions else math.nan
    return data


def feature_source(work: WorkDir, settings: PipelineSettings | None = None) -> dict[str, str]:
    """The keys of the groups `features` reads (`Features.source`), without reading them."""
    keys = StageGroups.keys(settings or resolve_settings(work.path))
    return {stage: keys[stage] for stage in FEATURE_STAGES}


def split_data_key(
    work: WorkDir, split: str, settings: PipelineSettings | None = None
) -> str | None:
    """The split's `Features.data_key` without reading its features; None (unknown) where a
    group it reads does not exist (a finished run is then still taken as finished)."""
    from heads.data import SplitRows

    groups = StageGroups.resolve(work, settings or resolve_settings(work.path))
    frames, ocr_text = groups.find("frames"), groups.find("ocr_text")
    if frames is None or ocr_text is None:
        return None
    return SplitRows.read(work.manifest, frames, ocr_text, split).data_key()


def _same_model(a: str, b: str) -> bool:
    """Whether two model names are one model (local directories compared resolved)."""
    if Path(a).is_dir() and Path(b).is_dir():
        return Path(a).resolve() == Path(b).resolve()
    return a == b
