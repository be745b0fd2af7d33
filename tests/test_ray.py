"""The Ray executor (`--executor ray`, pipeline/distributed.py): each stage on Ray equals a single
process bitwise, an actor killed mid-stage loses no row, a plain run is refused while a Ray run
holds the group, and the CLI's refusals. Skipped where the optional `ray` extra is absent.

One local Ray (2 CPUs, actors at fractional CPUs) serves the whole session; every wait is
bounded (`RayOptions.timeout`, thread joins, subprocess timeouts)."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from cache import LockBusy, Shard, WorkDir
from cli.main import app
from pipeline import distributed
from pipeline.captions import run_captions
from pipeline.distributed import (
    RayExecutorError,
    RayOptions,
    StageTask,
    _Progress,
    _StageRun,
    import_ray,
    ray_session,
    run_on_ray,
    run_task,
)
from pipeline.encode import run_encode
from pipeline.ocr import run_ocr
from pipeline.settings import (
    CaptionSettings,
    OcrSettings,
    PipelineSettings,
    StageGroups,
    save_settings,
)
from tests.conftest import run_python
from tests.reliability.harness import assert_same, cache_arrays
from tests.test_stages import make_work

ray = pytest.importorskip("ray", reason="the optional Ray extra is absent: `make setup-ray`")

# 4 frames per video (the T = 4 segment centres) keep rapidocr to ~50 frames for 12 videos
SETTINGS = PipelineSettings(ocr=OcrSettings(max_frames=4), captions=CaptionSettings(frames=4))
OPTIONS = RayOptions(actors=2, timeout=300)  # s; bounded, with room for a loaded CI machine
runner = CliRunner()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray per test session with 2 CPUs, whatever the machine has; the runs below
    find it started and reuse it."""
    with ray_session(num_cpus=2) as started:
        yield started


@pytest.fixture(scope="module")
def reference(synth_set, tmp_path_factory) -> dict[str, Path]:
    """Work dirs of a single-process run: 'manifest' (no stage yet), then after each stage."""
    root = tmp_path_factory.mktemp("ray-reference")
    work = make_work(synth_set, root, "manifest")
    save_settings(work.path, SETTINGS)  # what the CLI reads back
    dirs = {"manifest": work.path}
    steps = {
        "ocr": lambda w: run_ocr(w, SETTINGS.ocr, progress=False, captions=SETTINGS.captions),
        "caption": lambda w: run_captions(w, SETTINGS.captions, SETTINGS.ocr, progress=False),
        "encode": lambda w: run_encode(
            w, SETTINGS.encode, SETTINGS.captions, SETTINGS.ocr, workers=0, progress=False
        ),
    }
    previous = work.path
    for stage, step in steps.items():
        dirs[stage] = Path(shutil.copytree(previous, root / stage))
        step(WorkDir(dirs[stage]))
        previous = dirs[stage]
    return dirs


def copy_of(reference: dict[str, Path], stage: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(reference[stage], tmp_path / "work"))


def test_each_stage_on_ray_equals_a_single_process(ray_cluster, reference, tmp_path):
    path = copy_of(reference, "manifest", tmp_path)
    work = WorkDir(path)
    (ocr,) = run_on_ray(work, SETTINGS, ["ocr"], OPTIONS, progress=False)
    assert (ocr.computed, ocr.failed, str(ocr).split(":")[0]) == (
        12,
        0,
        f"ocr [{ocr.key}] on ray (2 actors)",
    )
    assert_same(cache_arrays(path), cache_arrays(reference["ocr"]), "ocr")
    group = StageGroups.resolve(work, SETTINGS).ocr
    assert list(WorkDir(path).find_stage("ocr", group.key).reports()) == ["all"]  # merged
    # the gate's shares are over every task's frames, not the last task's alone
    single = WorkDir(reference["ocr"]).find_stage("ocr", group.key).reports()["all"]["figures"]
    assert single["over:"] == ocr.figures["over:"] > 0  # frames the gate saw
    assert ocr.figures == pytest.approx(single)

    # the CLI wiring; the work dir's saved settings give T and the OCR settings
    result = runner.invoke(
        app, ["caption", "--work", str(path), "--executor", "ray", "--actors", "2", "-q"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "on ray (2 actors): 12 computed, 0 failed" in result.output
    assert_same(cache_arrays(path), cache_arrays(reference["caption"]), "caption")

    reports = run_on_ray(work, SETTINGS, ["encode"], OPTIONS, progress=False)
    assert [(r.stage, r.computed) for r in reports] == [
        ("frames", 12),
        ("ocr_text", 12),
        ("queries", len(work.manifest.captions)),
    ]
    assert_same(cache_arrays(path), cache_arrays(reference["encode"]), "encode")
    # nothing left: no Ray task, no model load, nothing computed
    again = run_on_ray(work, SETTINGS, ["ocr", "caption", "encode"], OPTIONS, progress=False)
    assert all(r.computed == 0 and r.failed == 0 for r in again)


def test_killed_actor_loses_no_row_and_a_plain_run_is_refused_meanwhile(
    ray_cluster, reference, tmp_path
):
    path = copy_of(reference, "manifest", tmp_path)
    outcome: dict[str, object] = {}

    def coordinator() -> None:
        try:
            outcome["reports"] = run_on_ray(
                WorkDir(path), SETTINGS, ["ocr"], OPTIONS, progress=False
            )
        except BaseException as exc:  # reported by the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=coordinator, daemon=True)
    thread.start()
    group, done = None, 0
    deadline = time.monotonic() + 120
    while not done and time.monotonic() < deadline and thread.is_alive():
        group = group or StageGroups.resolve(WorkDir(path), SETTINGS).find("ocr")
        done = group.counts()["done"] if group is not None else 0
        time.sleep(0.05)
    assert 0 < done < 12, f"no row to kill in the middle of: {done} done, {outcome}"

    # a plain run is refused while the Ray run holds the group (as while --shard runs)
    with pytest.raises(LockBusy, match="in use by another process"):
        run_ocr(WorkDir(path), SETTINGS.ocr, progress=False, captions=SETTINGS.captions)

    names = sorted(n for n in ray.util.list_named_actors() if n.startswith("tcd-ocr-"))
    assert len(names) == 2, names
    ray.kill(ray.get_actor(names[0]), no_restart=False)  # Ray restarts it and reruns its task

    thread.join(timeout=360)  # beyond OPTIONS.timeout: its error, not ours
    assert not thread.is_alive(), "the Ray run did not finish"
    assert "error" not in outcome, outcome.get("error")
    (report,) = outcome["reports"]
    assert (report.computed, report.failed) == (12, 0)
    assert_same(cache_arrays(path), cache_arrays(reference["ocr"]), "ocr after a kill")
    rerun = run_ocr(WorkDir(path), SETTINGS.ocr, progress=False, captions=SETTINGS.captions)
    assert rerun.computed == 0


class _FlakyCluster:
    """A stand-in for the `ray` module in `_StageRun._run_tasks`: actors whose calls finish in
    submission order, the first call of shard 0 answered `ActorUnavailableError` (the caller
    lost touch with its actor, which may still be running it)."""

    exceptions = ray.exceptions

    def __init__(self) -> None:
        self.calls: list[tuple[str, Shard]] = []  # (actor, shard), in submission order

    def actor(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(run=SimpleNamespace(remote=lambda task: self._submit(name, task)))

    def _submit(self, name: str, task: StageTask) -> int:
        self.calls.append((name, task.shard))
        return len(self.calls) - 1

    def wait(self, refs: list[int], num_returns: int, timeout: float) -> tuple[list, list]:
        return refs[:1], refs[1:]

    def get(self, ref: int, timeout: float) -> list:
        if self.calls[ref][1] == Shard(0, 3) and [s for _, s in self.calls].count(Shard(0, 3)) == 1:
            raise ray.exceptions.ActorUnavailableError("connection lost", None)
        return [self.calls[ref]]


def test_a_task_whose_actor_was_unavailable_goes_back_to_that_actor(tmp_path):
    # Another actor would find the shard's lock still held by the first attempt and stop the run.
    cluster = _FlakyCluster()
    work = SimpleNamespace(path=tmp_path)  # named only in errors
    run = _StageRun(cluster, work, None, "ocr", RayOptions(), progress=False)
    tasks = [StageTask("ocr", str(tmp_path), SETTINGS, Shard(i, 3)) for i in range(3)]
    actors = [cluster.actor("a"), cluster.actor("b")]
    progress = _Progress([], [])
    results = run._run_tasks(actors, tasks, progress, time.monotonic())
    assert sorted(shard.index for [(_, shard)] in results) == [0, 1, 2]
    # a shard counts as ended (its retried failures finished) once its task returned, not
    # when an attempt was lost
    assert sorted(shard.index for shard in progress.ended) == [0, 1, 2]
    shard0 = [name for name, shard in cluster.calls if shard == Shard(0, 3)]
    assert len(shard0) == 2 and len(set(shard0)) == 1, cluster.calls


def test_progress_counts_a_retried_failure_once_its_task_has_rerun_it(reference, tmp_path):
    # A retried row reads as failed before its task reruns it, and a failure written again
    # looks like the old one: the bar opened full and a stopped run said 0 rows left.
    path = copy_of(reference, "ocr", tmp_path)
    groups = StageGroups.resolve(WorkDir(path), SETTINGS)
    group = groups.find("ocr")
    keys = {row: str(group.group["key"][row]) for row in (3, 4)}
    for row, key in keys.items():
        group.fail_row(row, key, "decoder gave up")
    opened = [groups.group(name) for name in distributed.COMMAND_GROUPS["ocr"]]

    plain = _Progress.start(groups, opened, retry_failed=False)
    assert (plain.total, plain.left()) == (0, "0 row(s) left pending")
    progress = _Progress.start(groups, opened, retry_failed=True)
    assert progress.total == 2
    assert progress.left() == "2 row(s) left pending (ocr rows 3, 4)"
    group.fail_row(3, keys[3], "decoder gave up")  # rerun, failed the same way again
    assert progress.left() == "2 row(s) left pending (ocr rows 3, 4)"
    progress.ended.append(Shard(1, 2))  # the task of the odd rows returned
    assert progress.left() == "1 row(s) left pending (ocr rows 4)"
    data = {name: group.group[name][4] for name in group.group.array_keys()}
    data = {name: value for name, value in data.items() if name not in ("key", "done", "error")}
    group.write_row(4, keys[4], data)  # rerun, done this time
    assert [mask.tolist() for mask in progress.finished()] == [[True, True]]


def test_ray_refuses_shard_and_other_executors_options(reference, tmp_path):
    path = copy_of(reference, "manifest", tmp_path)
    result = runner.invoke(app, ["ocr", "--work", str(path), "--executor", "ray", "--shard", "0/2"])
    assert result.exit_code != 0
    assert "--executor ray cannot take --shard" in str(result.exception)
    result = runner.invoke(app, ["ocr", "--work", str(path), "--actors", "2"])
    assert "need --executor ray" in str(result.exception)
    result = runner.invoke(app, ["ocr", "--work", str(path), "--ray-timeout", "60"])
    assert "need --executor ray" in str(result.exception)
    assert WorkDir(path).stages() == []  # refused before any work


def test_missing_ray_is_a_clear_error(reference, tmp_path, monkeypatch):
    path = copy_of(reference, "ocr", tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayExecutorError, match=r"pip install -e \.\[ray\]"):
        import_ray()
    result = runner.invoke(app, ["caption", "--work", str(path), "--executor", "ray", "-q"])
    assert isinstance(result.exception, RayExecutorError), result.output
    assert "optional extra" in str(result.exception)


def test_the_cli_and_the_executor_module_do_not_import_ray():
    code = (
        "import sys, cli.main, pipeline.distributed\n"
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_ray_run_of_a_single_task_writes_under_the_coordinators_lock(
    ray_cluster, reference, tmp_path
):
    # one actor, one task `0/1` (encode on a one-GPU machine, or one pending row): the task
    # shares the writer lock the coordinator holds shared, instead of asking for it alone
    path = copy_of(reference, "caption", tmp_path)
    work = WorkDir(path)
    one = RayOptions(actors=1, timeout=300)
    reports = run_on_ray(work, SETTINGS, ["encode"], one, progress=False)
    assert [(r.computed, r.failed) for r in reports] == [
        (12, 0),
        (12, 0),
        (len(work.manifest.captions), 0),
    ]
    assert_same(cache_arrays(path), cache_arrays(reference["encode"]), "encode on one actor")


def test_a_task_whose_settings_key_other_groups_is_refused(reference, tmp_path):
    # a relative model folder that a cluster node reads elsewhere keys other groups there:
    # its rows would go to them while the coordinator waits, so the task refuses
    path = copy_of(reference, "ocr", tmp_path)
    keys = StageGroups.keys(SETTINGS)
    task = StageTask(
        "caption", str(path), SETTINGS, Shard(0, 2), cwd=os.getcwd(),
        keys=(("captions", keys["captions"][::-1]),),
    )  # fmt: skip
    with pytest.raises(RayExecutorError, match="key other groups than the coordinator's"):
        run_task(task)
    assert WorkDir(path).find_stage("captions", keys["captions"]) is None  # nothing written
    same = replace(task, keys=(("captions", keys["captions"]),))
    assert [r.computed for r in run_task(same)] == [6]


class _FakeRay:
    """A stand-in for the `ray` module in `ray_session`: records what `ray.init` is asked."""

    def __init__(self) -> None:
        self.asked: dict[str, object] = {}

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: object) -> None:
        self.asked = kwargs

    def shutdown(self) -> None:
        pass


def test_more_actors_than_the_cluster_can_place_are_refused_at_once(tmp_path):
    # at the least default share (0.25 CPU) 9 actors need 2.25 of 2 CPUs: one never started,
    # and the run waited STARTUP_TIMEOUT_S (300 s) before saying so
    cluster = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    work = SimpleNamespace(path=tmp_path)
    run = _StageRun(cluster, work, None, "ocr", RayOptions(actors=9), progress=False)
    with pytest.raises(RayExecutorError, match="ask for at most 8 actors"):
        run._actors(rows=100, gpus=False)


def test_actors_asked_for_beyond_a_local_ray_are_refused_at_once(tmp_path):
    # --actor-cpus (or --actors beyond the GPUs, for encode) that a local Ray cannot place
    # waited STARTUP_TIMEOUT_S (300 s): only a cluster given by --ray-address may grow
    work = SimpleNamespace(path=tmp_path)
    asked = RayOptions(actors=4, actor_cpus=1.0)
    ocr = _StageRun(None, work, None, "ocr", asked, progress=False)
    with pytest.raises(RayExecutorError, match=r"\(--actor-cpus\) ask for 4 CPUs; .* at most 2"):
        ocr._placement({"CPU": 2.0}, rows=100, gpus=False)
    wide = _StageRun(None, work, None, "ocr", replace(asked, actor_cpus=4.0), progress=False)
    with pytest.raises(RayExecutorError, match="ask for fewer CPUs each$"):  # not "at most 0"
        wide._placement({"CPU": 2.0}, rows=100, gpus=False)
    remote = _StageRun(None, work, None, "ocr", replace(asked, address="10.0.0.1:6379"), False)
    assert remote._placement({"CPU": 2.0}, rows=100, gpus=False)[:2] == (4, 1.0)
    encode = _StageRun(None, work, None, "encode", RayOptions(actors=3), progress=False)
    with pytest.raises(RayExecutorError, match=r"3 actors at 1 GPU each; this Ray has 2 GPU"):
        encode._placement({"CPU": 16.0, "GPU": 2.0}, rows=100, gpus=True)


class _CreationFailed(ray.exceptions.ActorDiedError):
    """What Ray raises when an actor's __init__ fails, e.g. on a node without the project."""

    def __str__(self) -> str:
        return (
            "The actor died because of an error raised in its creation task, "
            "ray::tcd-ocr-0:StageWorker.__init__() (pid=1, ip=10.0.0.2)\n"
            "Traceback (most recent call last):\n"
            "ModuleNotFoundError: No module named 'pipeline'"
        )


def test_an_actor_dying_as_it_starts_is_one_line_naming_the_cause(tmp_path):
    # it was Ray's own traceback, through the CLI's one-line errors
    killed = []
    actor = SimpleNamespace(ready=SimpleNamespace(remote=lambda: 0))
    cluster = SimpleNamespace(
        exceptions=ray.exceptions,
        cluster_resources=lambda: {"CPU": 2.0},
        remote=lambda cls: SimpleNamespace(
            options=lambda **_: SimpleNamespace(remote=lambda threads: actor)
        ),
        get=lambda refs, timeout: (_ for _ in ()).throw(_CreationFailed()),
        kill=lambda a, no_restart: killed.append(a),
    )
    work = SimpleNamespace(path=tmp_path)
    run = _StageRun(cluster, work, None, "ocr", RayOptions(actors=2), progress=False)
    with pytest.raises(RayExecutorError) as refused:
        run._actors(rows=10, gpus=False)
    message = str(refused.value)
    assert "\n" not in message and "ModuleNotFoundError: No module named 'pipeline'" in message
    assert "pip install -e ." in message and len(killed) == 2


def test_ray_timeout_stops_the_run_and_keeps_its_rows(ray_cluster, reference, tmp_path):
    path = copy_of(reference, "manifest", tmp_path)
    args = ["ocr", "--work", str(path), "--executor", "ray", "--actors", "1", "-q"]
    result = runner.invoke(app, [*args, "--ray-timeout", "1"])
    assert isinstance(result.exception, RayExecutorError), result.output
    assert "still running after 1 s" in str(result.exception)
    result = runner.invoke(app, args)  # resumes
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert_same(cache_arrays(path), cache_arrays(reference["ocr"]), "ocr")


def test_encode_on_cpus_starts_one_actor_per_its_torch_threads(tmp_path, monkeypatch):
    # each encode actor pins the coordinator's torch threads: one actor per CPU ran
    # CPUs x threads threads on the cluster's CPUs
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    work = SimpleNamespace(path=tmp_path)
    encode = _StageRun(None, work, None, "encode", RayOptions(), progress=False)
    assert encode._placement({"CPU": 16.0}, rows=100, gpus=False)[::2] == (4, 4)
    assert encode._placement({"CPU": 16.0, "GPU": 2.0}, rows=100, gpus=True)[0] == 2
    assert encode._placement({"CPU": 2.0}, rows=100, gpus=False)[0] == 1
    ocr = _StageRun(None, work, None, "ocr", RayOptions(), progress=False)
    assert ocr._placement({"CPU": 16.0}, rows=100, gpus=False)[::2] == (16, None)


def test_ray_session_joins_ray_address_and_otherwise_starts_its_own(monkeypatch):
    fake = _FakeRay()
    monkeypatch.setattr(distributed, "import_ray", lambda: fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with ray_session(num_cpus=2):
        # "local": a fresh instance, even where `ray start` left a cluster on this machine
        assert (fake.asked["address"], fake.asked["num_cpus"]) == ("local", 2)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # as `ray job submit` sets it
    with ray_session(num_cpus=2):
        assert (fake.asked["address"], fake.asked["num_cpus"]) == ("10.0.0.1:6379", None)
    with ray_session("10.0.0.2:6379"):
        assert fake.asked["address"] == "10.0.0.2:6379"
