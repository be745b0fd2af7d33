"""`W/runs/<name>/`: the one owner of a run's files. No other module builds a path under `runs/`.

    config.toml        the resolved run config (heads/config.py)
    metrics.jsonl      one line per training epoch
    best.pt, last.pt   checkpoints (heads/checkpoint.py); last.pt also holds the optimiser
    curves.png         training loss and validation R@1
    metrics.json       `tcd eval` results, one entry per split (dropped when training
                       starts again, with another config or to finish an unfinished run)
    index_<split>.faiss, index_<split>.json   a FAISS index and what it was built from

Ablation runs live in `runs/ablate/<variant>/seed<S>/`, the study's tables in
`runs/ablations.md` (and `.json`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from torch import nn

from cache.atomic import atomic_write
from cache.errors import TcdError
from cache.keys import as_written_before, keyed_form, only_added_missing
from cache.settings import dump_toml, from_dict, load_settings, to_dict
from heads.checkpoint import CheckpointError, load_checkpoint
from heads.config import RunConfig
from heads.modules import build_head

RUNS = "runs"
# `for_ablation`'s names (a seed written as `seed{S}`: `seed07` would open `seed7`)
ABLATION_RUN = re.compile(r"ablate/(?P<variant>[^/\\]+)/seed(?P<seed>0|[1-9]\d*)")


def _run_file(name: str) -> property:
    """A read-only attribute of `RunDir`: the path of `name` in the run's folder."""
    return property(lambda run: run.path / name, doc=f"`{name}` in the run's folder")


class RunDir:
    """The files of one run: `RunDir(work_path, name)`."""

    def __init__(self, work: str | Path, name: str):
        self.check_name(name)
        self.work = Path(work)
        self.name = name
        self.path = self.work / RUNS / name

    @staticmethod
    def check_name(name: str) -> None:
        """Refuse a run (or ablation variant) name that is no plain folder name."""
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise CheckpointError(f"run name {name!r} must be a plain folder name")

    @classmethod
    def named(cls, work: str | Path, name: str) -> RunDir:
        """The run `name` names in `work`: `NAME`, or an ablation run `ablate/VARIANT/seedS`
        (as `tcd ablate` names them)."""
        ablation = ABLATION_RUN.fullmatch(name)
        if ablation:
            return cls.for_ablation(work, ablation["variant"], int(ablation["seed"]))
        return cls(work, name)

    @classmethod
    def of(cls, path: str | Path) -> RunDir | None:
        """The run whose folder `path` is, in its work dir (`W/runs/NAME`, or an ablation run
        `W/runs/ablate/VARIANT/seedS`), or None where `path` is no run folder of a work dir."""
        path = Path(path)
        for depth in (1, 3):
            if len(path.parts) > depth + 1 and path.parents[depth - 1].name == RUNS:
                name = path.relative_to(path.parents[depth - 1]).as_posix()
                if (depth == 1 and name not in (".", "..")) or ABLATION_RUN.fullmatch(name):
                    return cls.named(path.parents[depth], name)
        return None

    @classmethod
    def work_of(cls, path: str | Path) -> Path | None:
        """The work dir whose run folder `path` is (`RunDir.of`), or None."""
        run = cls.of(path)
        return run.work if run is not None else None

    @classmethod
    def at(cls, path: str | Path) -> RunDir:
        """A run in any folder (tests, benchmarks): the same files, outside a work dir."""
        run = cls.__new__(cls)
        run.path = Path(path)
        run.work, run.name = run.path.parent, run.path.name
        return run

    @classmethod
    def for_ablation(cls, work: str | Path, variant: str, seed: int) -> RunDir:
        run = cls(work, variant)
        run.name = f"ablate/{variant}/seed{seed}"
        run.path = Path(work) / RUNS / "ablate" / variant / f"seed{seed}"
        return run

    @staticmethod
    def study_tables(work: str | Path) -> Path:
        """Default place of `tcd ablate`'s Markdown tables (the JSON goes beside it)."""
        return Path(work) / RUNS / "ablations.md"

    @classmethod
    def evaluated(cls, work: str | Path) -> list[RunDir]:
        """Runs with saved `tcd eval` metrics, by name."""
        root = Path(work) / RUNS
        found = [*root.glob("*/metrics.json"), *root.glob("ablate/*/seed*/metrics.json")]
        runs = [run for run in (cls.of(p.parent) for p in found) if run is not None]
        return sorted(runs, key=lambda run: run.name)

    # -- files (listed in the module docstring) ------------------------------------------------
    config_path = _run_file("config.toml")
    best = _run_file("best.pt")
    last = _run_file("last.pt")
    epochs_log = _run_file("metrics.jsonl")
    curves = _run_file("curves.png")
    metrics_path = _run_file("metrics.json")

    def index_path(self, split: str) -> Path:
        """The split's FAISS index (`tcd index`)."""
        return self.path / f"index_{split}.faiss"

    def index_meta_path(self, split: str) -> Path:
        """The record of what the split's index was built from (retrieval/run_split.py)."""
        return self.path / f"index_{split}.json"

    # -- contents -----------------------------------------------------------------------------
    def create(
        self, config: RunConfig, features: dict[str, str] | None = None, data: str | None = None
    ) -> str:
        """Make the folder for a run of `config` on `features` (feature group keys) and `data`
        (`Features.data_key`) and write the resolved config; returns its TOML text. The
        checkpoints of another run there (another config, features or data: not `holds`)
        and its metrics go first, so the
        config never sits beside another config's head (which `tcd eval` would load under
        it): last.pt, then best.pt, so a kill between leaves the old config with its head;
        then its curves (`tcd report` showed them for the new run)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.holds(config, features, data=data):
            self.last.unlink(missing_ok=True)
            self.best.unlink(missing_ok=True)
            self.curves.unlink(missing_ok=True)
            self.forget_metrics()
        text = dump_toml(to_dict(config))
        atomic_write(self.config_path, text)
        return text

    def require(self, hint: str | None = None) -> None:
        """Refuse a folder without a run's config.toml, with `hint` (default: how to train
        the run there)."""
        if not self.config_path.exists():
            ablation = ABLATION_RUN.fullmatch(self.name)
            if hint is None and ablation:
                hint = (
                    f"`tcd ablate --work {self.work} --grid GRID --seeds {ablation['seed']}` "
                    f"trains it (GRID naming a variant {ablation['variant']!r})"
                )
            hint = hint or (
                f"train it with "
                f"`tcd train --work {self.work} --config configs/tcd.toml --name {self.name}`"
            )
            raise CheckpointError(f"{self.path}: no such run (no config.toml); {hint}")

    def config(self) -> RunConfig:
        self.require()
        return load_settings(RunConfig, self.config_path)

    def load_head(
        self, frame_dim: int, text_dim: int, shared_space: bool = False
    ) -> tuple[nn.Module, RunConfig]:
        """The best checkpoint, loaded strictly into a head built from the run's config
        (`shared_space`: as `Features.shared_space` of the features it will score)."""
        config = self.config()
        head = build_head(config.head, frame_dim, text_dim, shared_space)
        load_checkpoint(self.best, head)
        return head.eval(), config

    def checkpoint_identity(self) -> dict[str, Any]:
        """What identifies the best checkpoint's content: its size and SHA-256 (no timestamps,
        so a copied work dir keeps its indexes and the same build records the same bytes)."""
        self.require()
        if not self.best.exists():
            raise CheckpointError(f"{self.best}: checkpoint not found; train the run first")
        data = self.best.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        return {"file": self.best.name, "bytes": len(data), "sha256": digest}

    def epochs(self) -> list[dict[str, Any]]:
        """The per-epoch records written so far."""
        if not self.epochs_log.exists():
            return []
        return [json.loads(line) for line in self.epochs_log.read_text().splitlines() if line]

    def _last_state(self) -> dict[str, Any] | None:
        # read for its record (config, features, data, epochs), not its tensors: last.pt
        # holds the optimizer's moments too, twice the model's size
        return load_checkpoint(self.last, mmap=True) if self.last.exists() else None

    def replaced_because(
        self, config: RunConfig, features: dict[str, str] | None, data: str | None
    ) -> str | None:
        """Why training `config` on `features` and `data` (as `holds` takes them) starts
        afresh over the run last.pt holds: another config (each setting that changed), other
        features or other train rows. None where it resumes, or there is no run."""
        state = self._last_state()
        if state is None:
            return None
        changes = config_changes(state.get("config", ""), config)
        if changes:
            shown = "; ".join(changes[:6]) + ("; ..." if len(changes) > 6 else "")
            return f"{self.name} holds a run of another config ({shown})"
        if not self.holds(config, features, state):
            return f"{self.name} was trained on other features (the pipeline settings changed)"
        if not self.holds(config, features, state, data):
            return (
                f"{self.name} was trained on other train videos or captions (added, edited or "
                "newly encoded since)"
            )
        return None

    def trained_on(self, state: dict[str, Any] | None = None) -> dict[str, str] | None:
        """The feature groups (stage -> key) last.pt (or its `state`) was trained on; None if
        it predates their record (or there is no last.pt)."""
        state = state or self._last_state() or {}
        return json.loads(state["features"]) if state.get("features") else None

    def holds(
        self,
        config: RunConfig,
        features: dict[str, str] | None = None,
        state: dict[str, Any] | None = None,
        data: str | None = None,
    ) -> bool:
        """Whether last.pt (or its `state`) is a run of `config` on `features` (feature group
        keys) and `data` (`Features.data_key`; None: any). A run that predates the record of
        either counts as on any. Configs compare parsed."""
        state = state or self._last_state()
        if state is None:
            return False
        trained_on = self.trained_on(state)
        same_features = features is None or trained_on is None or trained_on == features
        same_data = data is None or not state.get("data") or state["data"] == data
        return same_features and same_data and same_config(state.get("config", ""), config)

    def finished(
        self,
        config: RunConfig | None = None,
        features: dict[str, str] | None = None,
        data: str | None = None,
    ) -> dict[str, Any] | None:
        """The best epoch's record when this folder holds a finished run of `config` (default:
        its own config.toml) on `features` and `data` (`holds`): every epoch done or stopped
        early. Else None. Reads last.pt only, once."""
        config = config or self.config()
        state = self._last_state()
        if state is None or not self.holds(config, features, state, data):
            return None
        best = {"val_loss": math.inf, **json.loads(state["best"])}
        if best.get("val_r1") == -best["val_loss"]:  # an older version's R@1 stand-in
            del best["val_r1"]  # (minus the training loss, without held-out captions)
        stale = int(state["epoch"]) - best["epoch"]
        done = int(state["epoch"]) + 1 >= config.train.epochs or stale >= config.train.patience
        # the steps after the last epoch (the fusion weights) are done too; a last.pt that
        # predates this record finished them
        return best if done and state.get("finished", True) else None

    def saved_metrics(self) -> dict[str, Any]:
        """The saved `tcd eval` reports by split ({} before any); a file that is no such
        record (edited by hand, another tool's) is refused, naming it."""
        if not self.metrics_path.exists():
            return {}
        saved, why = None, ""
        try:
            saved = json.loads(self.metrics_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            why = f" ({exc})"
        if not isinstance(saved, dict) or not all(isinstance(r, dict) for r in saved.values()):
            raise CheckpointError(
                f"{self.metrics_path}: not a `tcd eval` record{why}; delete it and evaluate "
                "the run again (tcd eval)"
            )
        return saved

    def forget_metrics(self) -> None:
        """Drop the saved `tcd eval` metrics (training is about to replace the checkpoint they
        describe: `tcd results` would show them beside a head they no longer measure)."""
        self.metrics_path.unlink(missing_ok=True)

    def save_metrics(self, split: str, report: dict[str, Any]) -> None:
        try:
            saved = self.saved_metrics()
        except CheckpointError:  # a damaged record: this report replaces it
            saved = {}
        atomic_write(self.metrics_path, json.dumps({**saved, split: report}, indent=2))


# Settings that size the work, not what a run learns: a run resumed under another value goes
# on (the memory budget of validation scoring sets its block shapes, which can move the last
# bits of validation scores, and so a near tie in early stopping or the kept epoch)
RESOURCE_SETTINGS = ("train.score_memory_gb",)


def same_config(saved_text: str, config: RunConfig) -> bool:
    """Whether a config saved as TOML text is `config`, compared parsed as settings keys
    compare them (`cache.keys.keyed_form`): the TOML's formatting does not matter, and a
    setting added since the run was saved (`added_setting`, absent from its text) counts at
    its value before it existed, the behaviour the run was trained with. Any other missing
    setting (an empty or cut text) makes it a different config; `RESOURCE_SETTINGS` do not
    count."""
    return config_changes(saved_text, config) == []


def config_changes(saved_text: str, config: RunConfig) -> list[str]:
    """`section.name: old -> new` for each setting (`RESOURCE_SETTINGS` aside) in which a
    config saved as TOML text differs from `config` (compared as `same_config` says), or
    one line saying the saved text is no config."""
    try:
        saved = tomllib.loads(saved_text)
        if not only_added_missing(RunConfig, saved):
            return ["the saved config lacks settings"]
        before = _flat(keyed_form(from_dict(RunConfig, as_written_before(RunConfig, saved))))
    except (tomllib.TOMLDecodeError, TypeError, TcdError):
        return ["the saved config cannot be read"]
    now = _flat(keyed_form(config))
    names = sorted((before.keys() | now.keys()) - set(RESOURCE_SETTINGS))
    missing = "(default)"  # an added setting at its value before it existed is left out
    return [
        f"{name}: {before.get(name, missing)} -> {now.get(name, missing)}"
        for name in names
        if before.get(name, missing) != now.get(name, missing)
    ]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out
