"""The Ray executor: `tcd ocr|caption|encode|extract --executor ray [--ray-address ADDR]`.

The only module that imports Ray (an optional extra, `pip install -e .[ray]`), and only inside
its functions, so importing it costs nothing where Ray is absent.

How a Ray run keeps the cache's rules (DESIGN.md section 7), with the `--shard` machinery:
- This process, the coordinator, loads no model. It creates the stage's groups and grows
  their arrays to the manifest, then holds the manifest's shared lock and each group's writer
  lock *shared* for the whole run: a plain (unsharded) run is refused meanwhile, exactly as
  while `--shard i/n` workers run.
- The pending rows go out as tasks `Shard(i, n)`. A task runs the stage function itself
  (`run_ocr`, `run_captions`, `run_encode`) with that shard inside an actor: it takes the
  shard's own lock, writes only its own rows (one chunk per row) and records the rows that
  failed. The data arrays, whose widths only a loaded model knows, are created by the first
  task under the group's layout lock, so the zarr metadata has one writer at a time. Decoders
  and the OCR engine are created inside the actor.
- An actor that dies is restarted (`MAX_RESTARTS`) and its task rerun (`MAX_TASK_RETRIES`;
  Ray's defaults are 0); a rerun task resumes its shard's pending rows. A task whose actor is
  gone for good goes to another actor; one whose actor was only unavailable for a moment
  (the first attempt may still run there, holding the shard's lock) goes to that actor again,
  which runs it after that attempt. Rows therefore end done or failed, never lost; where no
  actor is left, the error names the rows still pending and a rerun resumes them.
- Threads are pinned in every actor (Ray sets `OMP_NUM_THREADS` from the actor's CPU share):
  torch to the coordinator's `torch.get_num_threads()` (what a single process uses), the OCR
  engine to `--threads` (`run_ocr`'s `threads`, 1 by default), so a Ray run writes the bits a
  single process writes.
- Every node must see the work dir at the same path on a POSIX file system (NFS, Lustre, ...):
  writer locks are `flock`s and crash safety rests on rename, so object stores are out of scope.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from cache import Shard, StageGroup, TcdError, WorkDir
from pipeline.settings import COMMAND_GROUPS, PipelineSettings, StageGroups
from pipeline.stage import StageReport, Upstream, merge_figures
from pipeline.video import Decoder

STAGES = ("ocr", "caption", "encode")  # in pipeline order, as the commands name them
# The group whose upstream a stage checks before it runs, as `run_captions` / `run_encode` do.
UPSTREAM = {"caption": "captions", "encode": "ocr_text"}
# Tasks per actor: small tasks balance the load and lose little to a crash. `run_encode` loads
# its models per call, so encode gets one task per actor (one model load each).
TASKS_PER_ACTOR = {"ocr": 4, "caption": 4, "encode": 1}
MAX_RESTARTS = 2  # an actor process that dies is started again this many times
MAX_TASK_RETRIES = 2  # ... and the task it was running resubmitted this many times
TASK_ATTEMPTS = 3  # a task whose actor is gone for good goes to another actor, this often
POLL_S = 1.0  # how long one wait for a finished task lasts (progress updates in between)
STARTUP_TIMEOUT_S = 300.0  # actors not running by then: the cluster lacks their resources
MIN_ACTOR_CPUS = 0.25  # the least CPU share an actor gets by default


class RayExecutorError(TcdError):
    """Ray is missing, unreachable, cannot place the actors, or a Ray run could not finish."""


@dataclass(frozen=True)
class RayOptions:
    """How a stage runs on Ray. `None` picks the default described per field."""

    address: str | None = None  # a running cluster (`ray start --head`); None: a local Ray
    actors: int | None = None  # None: encode on a GPU cluster its GPUs, on CPUs the cluster's
    # CPUs / torch threads (each encode actor runs the coordinator's count); else its CPUs
    actor_cpus: float | None = None  # per actor; None: share all CPUs but one (Ray's own work)
    ocr_threads: int | None = None  # onnxruntime's, per OCR actor; None: run_ocr's default
    timeout: float | None = None  # seconds a stage may take before the run stops (resumable)


@dataclass(frozen=True)
class StageTask:
    """One actor call: the rows of `shard` of one stage, with the stage's own options."""

    stage: str
    work: str  # absolute path, the same on every node
    settings: PipelineSettings
    shard: Shard | None = None  # None: every pending row, as a plain run
    retry_failed: bool = False
    decoder: str = Decoder.auto
    batch_size: int | None = None  # None: the stage function's default
    ocr_threads: int | None = None  # None: run_ocr's default
    # where the coordinator runs, and the keys of the groups it opened: relative model paths
    # in the settings are read from there, and an actor that keys the groups otherwise refuses
    cwd: str = ""
    keys: tuple[tuple[str, str], ...] = ()


@dataclass
class ClusterReport(StageReport):
    """A stage's report over all its tasks; `executor` says where it ran."""

    executor: str = ""

    def __str__(self) -> str:
        text = super().__str__()
        where = f"[{self.key}]"
        return text.replace(where, f"{where} on {self.executor}", 1) if self.executor else text


def import_ray() -> Any:
    """The `ray` module, or `RayExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayExecutorError(
            "--executor ray needs Ray, an optional extra: `pip install -e .[ray]` "
            "(or `make setup-ray`)"
        ) from None
    return ray


def run_task(task: StageTask) -> list[StageReport]:
    """Run one task's stage function on its shard (in an actor; plain Python, so testable)."""
    work = WorkDir(task.work)
    settings = task.settings
    if task.cwd and os.getcwd() != task.cwd and os.path.isdir(task.cwd):
        os.chdir(task.cwd)  # an actor of a cluster starts where its node's Ray was started
    _require_same_keys(task)
    sized = {"batch_size": task.batch_size} if task.batch_size else {}
    common = {"retry_failed": task.retry_failed, "progress": False, "shard": task.shard}
    if task.stage == "ocr":
        from pipeline.ocr import run_ocr

        threads = {"threads": task.ocr_threads} if task.ocr_threads else {}
        report = run_ocr(
            work, settings.ocr, decoder=task.decoder, captions=settings.captions,
            **sized, **threads, **common,
        )  # fmt: skip
        return [report]
    if task.stage == "caption":
        from pipeline.captions import run_captions

        return [run_captions(work, settings.captions, settings.ocr, **common)]
    if task.stage == "encode":
        from pipeline.encode import run_encode

        # workers=0: the actor forks no process (frames decoded, rows written in the actor)
        return run_encode(
            work, settings.encode, settings.captions, settings.ocr, workers=0,
            decoder=task.decoder, **sized, **common,
        )  # fmt: skip
    raise ValueError(f"unknown stage {task.stage!r}; expected one of {STAGES}")


def _require_same_keys(task: StageTask) -> None:
    """Refuse a task whose settings key other groups here than in the coordinator: a model
    folder given as a relative path that this node reads elsewhere (or not at all) would
    write the rows into another group while the coordinator waits for them."""
    here = StageGroups.keys(task.settings)
    differ = [f"{stage} {key} there, {here[stage]} here" for stage, key in task.keys
              if here[stage] != key]  # fmt: skip
    if differ:
        raise RayExecutorError(
            f"{task.stage} task {task.shard} on {os.uname().nodename}: its settings key other "
            f"groups than the coordinator's ({'; '.join(differ)}): a model or OCR folder of "
            "the settings reads differently on this node; give it as an absolute path on a "
            "file system every node sees"
        )


class StageWorker:
    """A Ray actor: runs tasks of one stage in its own process, threads pinned once."""

    def __init__(self, torch_threads: int | None) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)

    def ready(self) -> int:
        return os.getpid()

    def run(self, task: StageTask) -> list[StageReport]:
        return run_task(task)


def run_on_ray(
    work: WorkDir,
    settings: PipelineSettings,
    stages: Sequence[str],
    options: RayOptions = RayOptions(),
    *,
    retry_failed: bool = False,
    progress: bool = True,
    decoder: str = Decoder.auto,
    batch_sizes: Mapping[str, int] | None = None,
) -> list[StageReport]:
    """Run `stages` (of `STAGES`, in order) over `work` on Ray; their reports, upstream first.

    Connects to `options.address`, or starts a local Ray (stopped at the end) unless this
    process already has one. A stage with nothing to do runs in this process (it loads
    nothing), so a no-op rerun never starts Ray.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected some of {STAGES}")
    import_ray()  # the clear error before any work
    reports: list[StageReport] = []
    with ExitStack() as session:
        ray = None
        for stage in stages:
            groups = StageGroups.resolve(work, settings)
            keys = StageGroups.keys(settings)
            task = StageTask(
                stage, str(work.path.resolve()), settings, None, retry_failed, decoder,
                (batch_sizes or {}).get(stage), options.ocr_threads, os.getcwd(),
                tuple((name, keys[name]) for name in COMMAND_GROUPS[stage]),
            )  # fmt: skip
            if not any(groups.todo(name, retry_failed) for name in COMMAND_GROUPS[stage]):
                reports += run_task(task)  # nothing to do: no model loads, no Ray
                continue
            if stage in UPSTREAM:  # refused up front, creating nothing, as a plain run is
                Upstream(groups, UPSTREAM[stage]).require(retry_failed)
            if ray is None:
                ray = session.enter_context(ray_session(options.address))
            reports += _StageRun(ray, work, groups, stage, options, progress).execute(task)
    return reports


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, connected: to `address` (else `RAY_ADDRESS`, as `ray job submit` sets it), else
    to a new local instance started here with `num_cpus` (default: this machine's cores), even
    where a `ray start` cluster runs on this machine; shut down on exit. A Ray this process
    already runs is reused and left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # A new local Ray turns token authentication on (its default) and warns that it did: noise
    # for a cluster that lives as long as this command.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    try:
        ray.init(
            address=address or "local",  # None would join a cluster `ray start` left here
            num_cpus=None if address else num_cpus or len(os.sched_getaffinity(0)),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = (
            " (a cluster with token authentication, Ray's default, needs RAY_AUTH_MODE=token "
            "and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
            if address and not os.environ.get("RAY_AUTH_MODE")
            else ""
        )
        raise RayExecutorError(f"cannot connect to {where}: {exc}{hint}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass
class _Progress:
    """Rows done or failed across the cluster, read from the groups themselves.

    A row that failed before and is run again (`--retry-failed`, a video readable again, an
    upstream row done since) reads as failed until its task reruns it, and a failure written
    again looks like the old one: such a row counts as finished once it is done, or once the
    task of its shard has returned (`ended`)."""

    groups: list[StageGroup]
    todo: list[np.ndarray]  # per group, the rows pending when the run started
    retried: list[np.ndarray] = field(default_factory=list)  # per group, mask over todo
    ended: list[Shard] = field(default_factory=list)  # the shards whose task has returned
    bar: Any = None
    interval: float = POLL_S
    next_poll: float = 0.0

    @classmethod
    def start(cls, groups: StageGroups, opened: list[StageGroup], retry_failed: bool) -> _Progress:
        """The rows each of the `opened` groups has to do now, and which of them failed
        before."""
        todo, retried = [], []
        for group in opened:
            failed = group.row_states()["failed"]
            rows = groups.pending(group.stage, retry_failed)
            todo.append(rows)
            retried.append(failed[rows])
        return cls(opened, todo, retried)

    @property
    def total(self) -> int:
        return sum(len(rows) for rows in self.todo)

    def finished(self) -> list[np.ndarray]:
        """Per group, which of its `todo` rows are done or failed now."""
        out = []
        retried = self.retried or [np.zeros(len(rows), bool) for rows in self.todo]
        for group, rows, again in zip(self.groups, self.todo, retried, strict=True):
            states = group.row_states()
            ended = np.zeros(len(rows), bool)
            for shard in self.ended:
                ended |= rows % shard.count == shard.index
            out.append(states["done"][rows] | (states["failed"][rows] & (~again | ended)))
        return out

    def poll(self, force: bool = False) -> None:
        """Update the bar; reading the row states costs, so poll at most every few reads."""
        now = time.monotonic()
        if self.bar is None or (not force and now < self.next_poll):
            return
        count = sum(int(mask.sum()) for mask in self.finished())
        self.bar.update(count - self.bar.n)
        took = time.monotonic() - now
        self.next_poll = time.monotonic() + max(self.interval, 4 * took)

    def left(self) -> str:
        """`3 row(s) left pending (ocr rows 1, 5, 9)`."""
        parts, count = [], 0
        for group, rows, done in zip(self.groups, self.todo, self.finished(), strict=True):
            pending = rows[~done]
            count += len(pending)
            if len(pending):
                shown = ", ".join(str(r) for r in pending[:10])
                parts.append(f"{group.stage} rows {shown}{', ...' if len(pending) > 10 else ''}")
        return f"{count} row(s) left pending" + (f" ({'; '.join(parts)})" if parts else "")


WRITTEN_WAIT_S = 10.0  # how long rows the tasks reported may take to show (NFS attribute caches)


def _all_written(progress: _Progress) -> bool:
    """Whether every row the run started with is done or failed, read again for up to
    `WRITTEN_WAIT_S` (a network file system may show this node another node's new chunk
    files late)."""
    deadline = time.monotonic() + WRITTEN_WAIT_S
    while not all(done.all() for done in progress.finished()):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


class _StageRun:
    """One stage on Ray: the coordinator's locks, the actors, the task queue, the report."""

    def __init__(
        self,
        ray: Any,
        work: WorkDir,
        groups: StageGroups,
        stage: str,
        options: RayOptions,
        progress: bool,
    ):
        self.ray, self.work, self.groups, self.stage = ray, work, groups, stage
        self.options, self.show_progress = options, progress

    def execute(self, base: StageTask) -> list[StageReport]:
        """Run `base`'s stage over its pending rows in tasks `Shard(i, n)`; one merged
        report per group of the stage, saved in the group as a plain run's."""
        started = time.monotonic()
        groups = [self.groups.group(name) for name in COMMAND_GROUPS[self.stage]]  # created here
        with ExitStack() as held:
            held.enter_context(self.work.manifest_lock(shared=True))
            for group in groups:
                held.enter_context(group.shared_lock())
            for group in groups:  # the coordinator grows the arrays; the tasks find them grown
                with group.layout_lock():
                    group.ensure_rows(len(group.expected()[0]))
            progress = _Progress.start(self.groups, groups, base.retry_failed)
            todo = progress.todo
            most = max(len(rows) for rows in todo)  # 0: another run did them meanwhile
            gpus = self.stage == "encode" and self.ray.cluster_resources().get("GPU", 0) >= 1
            actors = self._actors(most, gpus) if most else []
            executor = f"ray ({len(actors)} actor{'' if len(actors) == 1 else 's'})"
            count = min(TASKS_PER_ACTOR[self.stage] * len(actors), most)
            tasks = [replace(base, shard=Shard(i, count)) for i in range(count)]
            progress.bar = tqdm(
                total=progress.total,
                desc=f"{self.stage} on {executor}",
                unit="row",
                disable=not self.show_progress,
            )
            try:
                results = self._run_tasks(actors, tasks, progress, started)
                progress.poll(force=True)
                if not _all_written(progress):
                    raise self._stopped("its tasks ended with rows not written", progress)
            finally:
                progress.bar.close()
                for actor in actors:
                    self.ray.kill(actor, no_restart=True)
            reports = _merge(results, groups, todo, time.monotonic() - started, executor)
            for group, report in zip(groups, reports, strict=True):
                group.save_report(report.as_dict())  # replaces the tasks' per-shard reports
        return reports

    def _actors(self, rows: int, gpus: bool) -> list[Any]:
        """Start the actors (`_placement`) and wait until each runs."""
        ray = self.ray
        resources = ray.cluster_resources()
        count, actor_cpus, torch_threads = self._placement(resources, rows, gpus)
        token = uuid.uuid4().hex[:8]
        remote = ray.remote(StageWorker)
        actors = [
            remote.options(
                name=f"tcd-{self.stage}-{token}-{i}",
                num_cpus=actor_cpus,
                num_gpus=1 if gpus else 0,
                max_restarts=MAX_RESTARTS,
                max_task_retries=MAX_TASK_RETRIES,
            ).remote(torch_threads)
            for i in range(count)
        ]
        try:
            ray.get([actor.ready.remote() for actor in actors], timeout=STARTUP_TIMEOUT_S)
        except ray.exceptions.RayActorError as exc:  # its __init__ raised, or its node died
            for actor in actors:
                ray.kill(actor, no_restart=True)
            raise RayExecutorError(
                f"{self.stage}: a Ray actor died while starting ({_last_line(exc)}); every "
                "node needs this project and its packages installed, as on this one "
                "(`pip install -e .`)"
            ) from None
        except ray.exceptions.GetTimeoutError:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            raise RayExecutorError(
                f"{self.stage}: Ray could not start {count} actor(s) with {actor_cpus:g} CPU "
                f"{'and 1 GPU ' if gpus else ''}each in {STARTUP_TIMEOUT_S:.0f} s (the cluster "
                f"has {resources}); ask for fewer with --actors"
            ) from None
        return actors

    def _placement(
        self, resources: dict[str, float], rows: int, gpus: bool
    ) -> tuple[int, float, int | None]:
        """How many actors (no more than `rows`, the most rows a group has to do), the CPU
        share of each, and the torch threads each pins (encode: the coordinator's count)."""
        options = self.options
        cpus = float(resources.get("CPU", 1))
        torch_threads = None
        if self.stage == "encode":
            import torch

            torch_threads = torch.get_num_threads()
        if options.actors:
            wanted = options.actors
        elif gpus:
            wanted = int(resources.get("GPU", 0))
        else:  # a CPU each; an encode actor runs torch_threads threads: one per that many
            wanted = max(1, int(cpus) // (torch_threads or 1))
        count = max(1, min(wanted, rows))
        actor_cpus = options.actor_cpus or max(MIN_ACTOR_CPUS, min(1.0, (cpus - 1) / count))
        # Actors the cluster cannot place wait STARTUP_TIMEOUT_S before failing: refused at
        # once, unless the user asked for them from a cluster that may grow (--ray-address)
        local = options.address is None
        if (options.actor_cpus is None or local) and count * actor_cpus > cpus:
            given = "--actor-cpus" if options.actor_cpus else "the least this executor gives"
            most = int(cpus / actor_cpus)
            raise RayExecutorError(
                f"{self.stage}: {count} actors at {actor_cpus:g} CPU each ({given}) ask for "
                f"{count * actor_cpus:g} CPUs; the cluster has {cpus:g}: "
                + (f"ask for at most {most} actors" if most else "ask for fewer CPUs each")
                + ("" if options.actor_cpus else ", or set --actor-cpus")
                + (" (an autoscaling cluster may add the CPUs)" if not local else "")
            )
        if gpus and local and count > resources.get("GPU", 0):
            raise RayExecutorError(
                f"{self.stage}: {count} actors at 1 GPU each; this Ray has "
                f"{resources.get('GPU', 0):g} GPU(s): ask for at most that many with --actors"
            )
        return count, actor_cpus, torch_threads

    def _run_tasks(
        self, actors: list[Any], tasks: list[StageTask], progress: _Progress, started: float
    ) -> list[list[StageReport]]:
        """Hand the tasks to idle actors until all are done; the reports in finishing order."""
        ray = self.ray
        queue = deque((task, 1) for task in tasks)
        idle = list(actors)
        running: dict[Any, tuple[Any, StageTask, int]] = {}
        results: list[list[StageReport]] = []
        timeout = self.options.timeout
        while queue or running:
            while queue and idle:
                actor, (task, attempt) = idle.pop(), queue.popleft()
                running[actor.run.remote(task)] = (actor, task, attempt)
            if not running:
                raise self._stopped("every actor died", progress)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in ready:
                actor, task, attempt = running.pop(ref)
                try:
                    results.append(ray.get(ref, timeout=POLL_S))
                    progress.ended.append(task.shard)
                    idle.append(actor)
                except ray.exceptions.RayActorError as exc:
                    if attempt >= TASK_ATTEMPTS:
                        raise self._stopped(
                            f"task {task.shard} failed {attempt} times ({exc})", progress
                        ) from None
                    if isinstance(exc, ray.exceptions.ActorDiedError):
                        queue.append((task, attempt + 1))  # resumes the shard's pending rows
                    else:
                        # Unavailable for a moment, not gone: the first attempt may still be
                        # running there and hold the shard's lock, which another actor would
                        # find busy (and stop the run). The actor runs its calls in order, so
                        # asked again it resumes the shard once that attempt has ended.
                        running[actor.run.remote(task)] = (actor, task, attempt + 1)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, TcdError):
                        raise cause from None  # the stage's own one-line error
                    message = f"task {task.shard} raised {cause or exc!r}"
                    raise self._stopped(message, progress) from exc
            progress.poll()
            if timeout is not None and time.monotonic() - started > timeout:
                raise self._stopped(f"still running after {timeout:g} s", progress)
        return results

    def _stopped(self, reason: str, progress: _Progress) -> RayExecutorError:
        return RayExecutorError(
            f"{self.stage} on ray stopped: {reason}; {progress.left()}. The rows written so far "
            f"are kept: rerun the same command to resume (`tcd cache status --work "
            f"{self.work.path}` shows them)"
        )


def _last_line(exc: Exception) -> str:
    """The last line of a Ray error's text: the cause under Ray's own account of it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def _merge(
    results: list[list[StageReport]],
    groups: list[StageGroup],
    todo: list[np.ndarray],
    seconds: float,
    executor: str,
) -> list[ClusterReport]:
    """One report per group over every task. Rows computed and failed are read from the group
    (a task rerun after a crash reports only what its rerun did); failure kinds, warnings and
    phase seconds (summed over actors) come from the tasks' reports."""
    merged = []
    for index, (group, rows) in enumerate(zip(groups, todo, strict=True)):
        parts = [result[index] for result in results]
        states = group.row_states()
        failures: Counter[str] = Counter()
        examples: dict[str, str] = {}
        for part in parts:
            failures.update(part.failures)
            for kind, message in part.examples.items():
                examples.setdefault(kind, message)
        present = int(group.expected()[1].sum())
        merged.append(
            ClusterReport(
                group.stage,
                group.key,
                group.rows,
                computed=int(states["done"][rows].sum()),
                failed=int(states["failed"][rows].sum()),
                up_to_date=present - len(rows),
                seconds=seconds,
                **{
                    f"{phase}_s": sum(getattr(p, f"{phase}_s") for p in parts)
                    for phase in ("setup", "read", "compute", "write")
                },
                warned=sum(p.warned for p in parts),
                failures=dict(failures.most_common()),
                examples=examples,
                errors=[message for part in parts for message in part.errors],
                figures=merge_figures([part.figures for part in parts]),
                executor=executor,
            )
        )
    return merged


__all__ = [
    "ClusterReport",
    "RayExecutorError",
    "RayOptions",
    "StageTask",
    "StageWorker",
    "import_ray",
    "ray_session",
    "run_on_ray",
    "run_task",
]
