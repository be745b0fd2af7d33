"""The crash campaign: SIGKILL a `tcd` command at random moments, rerun it, and compare the
result with an uninterrupted run of the same command on the same inputs.

`chain(...)` runs the stages ocr -> caption -> encode -> train -> index once, uninterrupted,
each on a copy of the previous one's result, keeping every stage's input and output work
directories. `campaign(...)` then kills one stage's command `kills` times: each attempt starts
the command on the (partly done) work dir and kills it either after a delay drawn uniformly
from [0, uninterrupted duration] or once a random number of further rows (epochs) is written;
an attempt that finishes first is compared with the reference and the next attempt starts
again from the stage's input. After every kill the work dir must hold
no row marked done without its data (each done row equals the reference's row), and a killed
training run must keep its finished epochs (the rerun resumes from `last.pt`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cache import WorkDir
from pipeline.ocr import OcrSettings
from pipeline.settings import CaptionSettings, PipelineSettings, save_settings
from tests.conftest import tcd_process

RUN = "tcd"
# The settings `chain` saves in its first work dir: T = 4 frames per video (OCR reads the T
# segment centres whatever ocr.max_frames, so T sets its cost), and no other OCR sample
SETTINGS = PipelineSettings(ocr=OcrSettings(max_frames=1), captions=CaptionSettings(frames=4))
# Each stage's command after `--work W`; small enough for CI, long enough to kill mid-way.
COMMANDS: dict[str, list[str]] = {
    "ocr": ["ocr", "-q"],
    "caption": ["caption", "-q"],
    "encode": ["encode", "-q", "--workers", "0", "--batch-size", "8"],  # 2 videos a batch
    "train": [
        "train", "--config", "configs/tcd.toml", "--name", RUN,
        "--set", "train.epochs=12", "--set", "train.batch_size=4",
        "--set", "train.patience=100", "--set", "train.val_fraction=0.3",
    ],
    "index": ["index", "--run", RUN],
}  # fmt: skip
STAGES = list(COMMANDS)
TIMING = {"seconds", "train_seconds"}  # the only fields allowed to differ between runs
# cache/atomic.py's temporary file, NAME.<host>.<pid>.tmp[.ext]: a kill leaves the one it was
# writing (a rerun never reads it, and clears it when it writes that file again), so it is not
# part of a run's result
LEFT_BY_A_KILL = re.compile(r"\.[^.]+\.\d+\.tmp(\.\w+)?$")


@dataclass
class Link:
    """One stage of the chain: its input work dir, its uninterrupted output, how long it took."""

    stage: str
    before: Path
    after: Path
    seconds: float


@dataclass
class CampaignStats:
    stage: str
    kills: int = 0
    kills_mid_work: int = 0  # kills after the attempt had written at least one row or epoch
    completions: int = 0
    moments: list[str] = field(default_factory=list)  # 'time:SECONDS' or 'progress:UNITS'

    def __str__(self) -> str:
        return (
            f"{self.stage}: {self.kills} kills ({self.kills_mid_work} after some rows or "
            f"epochs were written), {self.completions} completed runs equal to the reference"
        )


def start(stage: str, work: Path) -> subprocess.Popen:
    command = COMMANDS[stage]
    return tcd_process(command[0], "--work", str(work), *command[1:])


def run_to_end(stage: str, work: Path, timeout: float = 600) -> float:
    started = time.monotonic()
    proc = start(stage, work)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{stage} failed:\n{out}\n{err}"
    return time.monotonic() - started


def chain(manifest_work: Path, root: Path) -> dict[str, Link]:
    """Run every stage once, uninterrupted, each on a copy of the previous output (the first
    with `SETTINGS` saved in `manifest_work`, as a command saves the settings it ran with)."""
    save_settings(manifest_work, SETTINGS)
    links, current = {}, manifest_work
    for stage in STAGES:
        after = root / f"after-{stage}"
        shutil.copytree(current, after)
        links[stage] = Link(stage, current, after, run_to_end(stage, after))
        current = after
    return links


# -- what a work dir holds ------------------------------------------------------------------
def cache_arrays(work: Path) -> dict[str, np.ndarray]:
    out = {}
    for group in WorkDir(work).stages():
        for name in group.group.array_keys():
            out[f"{group.stage}/{group.key}/{name}"] = np.asarray(group.group[name][:])
    return out


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def run_files(work: Path) -> dict[str, object]:
    """The run directory's outputs, timing fields left out."""
    out: dict[str, object] = {}
    run = work / "runs" / RUN
    for path in sorted(run.glob("*")) if run.exists() else []:
        if LEFT_BY_A_KILL.search(path.name):
            continue
        if path.suffix == ".pt":
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if "best" in payload:
                payload["best"] = _without_timing(json.loads(payload["best"]))
            out[path.name] = payload
        elif path.name == "metrics.jsonl":
            lines = path.read_text().splitlines()
            out[path.name] = [_without_timing(json.loads(line)) for line in lines]
        elif path.suffix in (".faiss", ".toml"):
            out[path.name] = path.read_bytes()
        elif path.suffix != ".png":  # the plot is a picture of metrics.jsonl
            out[path.name] = path.read_bytes()
    return out


def assert_same(a: object, b: object, where: str = "") -> None:
    """Bitwise equality of nested dicts/lists of arrays, tensors, bytes and plain values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, f"{where}: dtypes differ"
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_equal_runs(work: Path, reference: Path) -> None:
    assert_same(cache_arrays(work), cache_arrays(reference), "caches")
    assert_same(run_files(work), run_files(reference), "runs")


def progress_of(work: Path) -> int:
    """Rows marked done over all groups, plus finished epochs and the index: grows with work."""
    done = sum(int(g.group["done"][:].sum()) for g in WorkDir(work).stages())
    lines = work / "runs" / RUN / "metrics.jsonl"
    epochs = len(lines.read_text().splitlines()) if lines.exists() else 0
    return done + epochs + (work / "runs" / RUN / "index_test.faiss").exists()


def assert_nothing_half_done(work: Path, reference: Path) -> None:
    """After a kill: every row marked done holds the reference's data and key; a training
    checkpoint loads and its epochs match the reference's; an index file and its record of
    what it was built from (written after it) are complete and the reference's bytes."""
    ref = cache_arrays(reference)
    for group in WorkDir(work).stages():
        prefix = f"{group.stage}/{group.key}/"
        done = np.asarray(group.group["done"][:])
        for name in group.group.array_keys():
            values = np.asarray(group.group[name][:])[done]
            np.testing.assert_array_equal(values, ref[prefix + name][done], err_msg=prefix + name)
    run, ref_run = work / "runs" / RUN, run_files(reference)
    if (run / "last.pt").exists():
        state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        epochs = int(state["epoch"]) + 1
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert_same(
            [_without_timing(r) for r in records[:epochs]],
            ref_run["metrics.jsonl"][:epochs],
            "metrics.jsonl",
        )
    for name in ("best.pt", "index_test.faiss", "index_test.json"):
        if (run / name).exists() and name.startswith("index_"):
            assert (run / name).read_bytes() == ref_run[name], name
        elif (run / name).exists():
            torch.load(run / name, map_location="cpu", weights_only=True)  # complete


def kept_epochs(work: Path) -> list[str]:
    """The raw metrics lines of the epochs saved in last.pt (a resumed run must keep them)."""
    run = work / "runs" / RUN
    if not (run / "last.pt").exists():
        return []
    epochs = int(torch.load(run / "last.pt", weights_only=True)["epoch"]) + 1
    return (run / "metrics.jsonl").read_text().splitlines()[:epochs]


def _kill_moment(
    proc: subprocess.Popen, work: Path, mode: str, value: float, rng: random.Random
) -> bool:
    """Wait for the moment, then SIGKILL `proc`; False when it finished first.

    mode "time": `value` seconds after the start (often during start-up or shut-down);
    mode "progress": once `value` more rows or epochs are written, plus up to 50 ms (so the
    kill lands among the writes of the next one)."""
    if mode == "time":
        try:
            proc.wait(timeout=value)
            return False
        except subprocess.TimeoutExpired:
            pass
    else:
        target = progress_of(work) + value
        while proc.poll() is None and progress_of(work) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is not None:
            return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


def campaign(
    link: Link,
    kills: int,
    scratch: Path,
    seed: int = 0,
    modes: tuple[str, ...] = ("time", "progress"),
) -> CampaignStats:
    """Kill `link.stage` `kills` times, cycling through `modes` (a random moment in time, a
    random point of progress); check the work dir after every kill and every finished run."""
    rng = random.Random(f"{link.stage}-{seed}")
    stats = CampaignStats(link.stage)
    total = progress_of(link.after) - progress_of(link.before)
    attempt = 0

    def fresh() -> Path:
        work = scratch / f"{link.stage}-{attempt}"
        shutil.copytree(link.before, work)
        return work

    work, kept = fresh(), []
    while stats.kills < kills:
        attempt += 1
        before = progress_of(work)
        if modes[attempt % len(modes)] == "time":
            mode, value = "time", rng.uniform(0, link.seconds)
        else:
            left = total - (before - progress_of(link.before))
            mode, value = "progress", rng.randint(1, max(1, left))
        proc = start(link.stage, work)
        if _kill_moment(proc, work, mode, value, rng):
            stats.kills += 1
            stats.moments.append(f"{mode}:{round(value, 2)}")
            stats.kills_mid_work += progress_of(work) > before
            assert_nothing_half_done(work, link.after)
            now = kept_epochs(work)
            assert now[: len(kept)] == kept, "a rerun recomputed epochs it had saved"
            kept = now
            continue
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{link.stage} failed after a kill:\n{err}"
        assert kept_epochs(work)[: len(kept)] == kept, "a rerun recomputed epochs it had saved"
        assert_equal_runs(work, link.after)
        stats.completions += 1
        shutil.rmtree(work)
        work, kept = fresh(), []
    run_to_end(link.stage, work)
    assert kept_epochs(work)[: len(kept)] == kept, "a rerun recomputed epochs it had saved"
    assert_equal_runs(work, link.after)
    stats.completions += 1
    return stats
