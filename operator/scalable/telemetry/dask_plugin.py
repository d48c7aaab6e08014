"""Telemetry of every Dask task, through Dask's own mechanisms, written as the run goes.

Three pieces, each where the fact it records is known:

* :class:`ProbedTask` wraps the user's function and runs *on the worker*, in the task's
  thread. It measures what only the worker sees: execution time (not queue wait), CPU
  seconds and peak memory, and the worker's resources. It sends two events through the
  worker's ``log_event`` (topic :data:`TASK_TOPIC`): ``started`` and ``finished``.
* :class:`TelemetrySchedulerPlugin` runs *on the scheduler*. It hears the nanny's
  ``worker-restart-memory`` event and, when a worker leaves, logs :data:`LOST_TOPIC` with
  whether memory killed it, because a killed worker can say nothing about its last task.
  It also logs :data:`WORKER_TOPIC` when a worker joins and leaves, with its resources.
* :class:`KernelOOMNannyPlugin` runs *in each nanny*. In a container with a memory limit the
  kernel, not the nanny, usually kills a worker that outgrows it (an allocation is faster than
  the nanny's memory monitor); the nanny sees only a signal. The plugin watches the
  container's cgroup OOM-kill counter and, when it rises, logs the same
  ``worker-restart-memory`` event the nanny's own monitor would, so the task that worker was
  running is recorded as ``oom_killed``.
* :class:`TelemetryCollector` runs *in the client*. It knows what was submitted (task
  name, tag, input features, submission time) and turns the events into
  :class:`~scalable.telemetry.schema.TaskObservation` records appended to a run as soon as
  they arrive, so a session that crashes keeps everything recorded up to the crash; and
  the worker events into :class:`~scalable.telemetry.schema.WorkerObservation` samples:
  one when a worker joins, one when it leaves (or when the session closes), so a worker's
  earliest and latest samples are its start and stop.

Measurement choices:

* CPU seconds: on a single-threaded worker, the process's CPU time over the task (counts
  the threads a library such as BLAS starts for it); on a multi-threaded worker the task
  thread's own CPU time, since the process total would include the other tasks.
* Peak memory: the absolute peak RSS of the worker process while the task ran, sampled
  every 10 ms in a background thread plus at start and end. Absolute rather than the
  increase over the start, because the container's memory limit and the OOM killer
  compare the absolute RSS: an advisor that learns from it recommends a limit that holds.
  On a multi-threaded worker it includes the other tasks running at the same time, which
  is what that worker needed.
* Task name: the function's ``__name__`` (``functools.partial`` unwrapped), stable across
  ``map`` calls, not the key.
* Input features: what the task declares with :func:`declare_features`, else every
  scalar argument (bool, int, finite float, short str) under its parameter name.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil
from distributed.diagnostics.plugin import NannyPlugin, SchedulerPlugin

from scalable.telemetry.schema import Resources, TaskObservation, TaskState, WorkerObservation

__all__ = [
    "TASK_TOPIC",
    "LOST_TOPIC",
    "WORKER_TOPIC",
    "ProbedTask",
    "TelemetrySchedulerPlugin",
    "KernelOOMNannyPlugin",
    "TelemetryCollector",
    "capture_features",
    "declare_features",
    "task_name",
]

TASK_TOPIC = "scalable-task"
LOST_TOPIC = "scalable-worker-lost"
WORKER_TOPIC = "scalable-worker"
SAMPLE_INTERVAL_S = 0.01
_MAX_FEATURE_STR = 200
_FEATURES_ATTRIBUTE = "__scalable_features__"


def task_name(fn: Callable[..., Any]) -> str:
    """The stable name of a task: the function's name, through partials and probes."""
    while isinstance(fn, (functools.partial, ProbedTask)):
        fn = fn.func
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return name if name != "<lambda>" else "lambda"


def declare_features(extractor: Callable[..., Mapping[str, Any]]) -> Callable[[Callable], Callable]:
    """Decorator: the task's input features are ``extractor(*args, **kwargs)``.

    For tasks whose inputs are not scalars (a path, a DataFrame) but have a size or kind
    that predicts their cost::

        @declare_features(lambda path, scenario: {"size_mb": os.path.getsize(path) / 1e6})
        def run_demeter_scenario(path, scenario): ...
    """

    def decorate(fn: Callable) -> Callable:
        setattr(fn, _FEATURES_ATTRIBUTE, extractor)
        return fn

    return decorate


def _scalar(value: Any) -> bool:
    if isinstance(value, bool) or isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= _MAX_FEATURE_STR


def capture_features(fn: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Input features of one call of ``fn``: declared ones, else scalar arguments by name.

    ``capture_features(run, (3,), {"size_mb": 200})`` is ``{"i": 3, "size_mb": 200}`` for
    ``def run(i, size_mb)``. Arguments that cannot be bound to the signature are recorded
    as ``arg0, arg1, ...`` and keyword names as they are.
    """
    extractor = getattr(fn, _FEATURES_ATTRIBUTE, None)
    if extractor is not None:
        declared = extractor(*args, **kwargs)
        return {str(k): v for k, v in dict(declared).items() if _scalar(v)}
    target = fn
    while isinstance(target, functools.partial):
        args = (*target.args, *args)
        kwargs = {**target.keywords, **kwargs}
        target = target.func
    try:
        bound = inspect.signature(target).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        named: dict[str, Any] = {f"arg{i}": v for i, v in enumerate(args)}
        named.update(kwargs)
    else:
        named = {}
        for name, value in bound.arguments.items():
            kind = bound.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                named.update({f"{name}{i}": v for i, v in enumerate(value)})
            elif kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            else:
                named[name] = value
    return {name: value for name, value in named.items() if _scalar(value)}


class _PeakRSS:
    """Samples this process's RSS in a daemon thread until stopped; keeps the maximum."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, name="scalable-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        return self.peak


def _process_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


@dataclass(frozen=True)
class ProbedTask:
    """The user's function, measured where it runs. Outside a Dask worker it just runs."""

    func: Callable[..., Any]

    @property
    def __name__(self) -> str:  # noqa: D401 - Dask names keys and prefixes after it
        return task_name(self.func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from distributed.worker import get_worker, thread_state

        try:
            worker = get_worker()
        except ValueError:
            return self.func(*args, **kwargs)
        key = getattr(thread_state, "key", None)
        key_text = str(key)
        nthreads = worker.state.nthreads
        single = nthreads == 1
        started = time.time()
        worker.log_event(TASK_TOPIC, {"phase": "started", "key": key_text, "worker": worker.address, "time": started})
        sampler = _PeakRSS()
        cpu0 = _process_cpu() if single else time.thread_time()
        wall0 = time.perf_counter()
        state, error = TaskState.succeeded.value, None
        try:
            return self.func(*args, **kwargs)
        except BaseException as exc:
            state, error = TaskState.erred.value, f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            duration = time.perf_counter() - wall0
            cpu = (_process_cpu() if single else time.thread_time()) - cpu0
            peak = sampler.stop()
            memory_limit = getattr(worker.memory_manager, "memory_limit", None)
            worker.log_event(
                TASK_TOPIC,
                {
                    "phase": "finished",
                    "key": key_text,
                    "worker": worker.address,
                    "worker_name": str(worker.name),
                    "started_at": started,
                    "finished_at": started + duration,
                    "duration_s": duration,
                    "cpu_seconds": max(0.0, cpu),
                    "peak_memory_bytes": int(peak),
                    "nthreads": nthreads,
                    "memory_limit": int(memory_limit) if memory_limit else None,
                    "state": state,
                    "error": error,
                },
            )


class TelemetrySchedulerPlugin(SchedulerPlugin):
    """Tells the client which workers left and whether memory killed them.

    The nanny logs ``worker-restart-memory`` just before it terminates a worker over its
    memory budget; the scheduler notices the worker gone through its closed connection.
    The two may arrive in either order, so the verdict on a lost worker waits
    ``grace_s`` for the memory event.
    """

    name = "scalable-telemetry"

    def __init__(self, grace_s: float = 1.0) -> None:
        self.grace_s = grace_s
        self._memory: dict[str, int] = {}
        self._pending: dict[asyncio.TimerHandle, tuple[Any, str, float]] = {}
        self._workers: dict[str, dict[str, Any]] = {}

    async def start(self, scheduler: Any) -> None:
        """Workers that joined before the plugin was registered are reported as joining now."""
        for address in list(scheduler.workers):
            self.add_worker(scheduler, address)

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        if ws is None or worker in self._workers:
            return
        info = {
            "worker": worker, "name": str(ws.name), "nthreads": ws.nthreads,
            "memory_limit": ws.memory_limit or None, "resources": dict(ws.resources or {}),
        }
        self._workers[worker] = info
        scheduler.log_event(WORKER_TOPIC, {**info, "event": "joined", "time": time.time(), "tasks_executing": 0})

    def flush(self) -> int:
        """Give the verdict on every lost worker now instead of after the grace period.

        A session closing right after a worker died would otherwise stop the scheduler before
        the timer fires, and the task that worker was running would never be recorded.
        """
        pending = list(self._pending.items())
        for handle, (scheduler, worker, left) in pending:
            handle.cancel()
            self._report(handle, scheduler, worker, left)
        return len(pending)

    async def close(self) -> None:
        self.flush()

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == "worker-restart-memory" and isinstance(msg, Mapping) and "worker" in msg:
            self._memory[str(msg["worker"])] = int(msg.get("rss") or 0)

    def remove_worker(self, scheduler: Any, worker: str, *, stimulus_id: str, **kwargs: Any) -> None:
        left = time.time()
        handle = asyncio.get_running_loop().call_later(self.grace_s, lambda: self._report(handle, scheduler, worker, left))
        self._pending[handle] = (scheduler, worker, left)

    def _report(self, handle: asyncio.TimerHandle, scheduler: Any, worker: str, left: float) -> None:
        if self._pending.pop(handle, None) is None:
            return
        rss = self._memory.pop(worker, None)
        scheduler.log_event(LOST_TOPIC, {"worker": worker, "time": left, "memory": rss is not None, "rss": rss})
        info = self._workers.pop(worker, None)
        if info is not None:
            scheduler.log_event(WORKER_TOPIC, {**info, "event": "left", "time": left, "memory_bytes": rss})


def own_oom_counter_files(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> tuple[str, ...]:
    """Where this process finds its own memory cgroup's OOM-kill counter, most specific first:
    its cgroup's path under the hierarchy (a process on a host), then the hierarchy's root (in
    a container the runtime mounts the container's own cgroup there). cgroup v1 keeps it in
    memory.oom_control ("oom_kill N", Linux 4.13+), v2 in memory.events."""
    found: list[str] = []
    try:
        lines = open(proc_cgroup).read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            found.append(f"{root}/memory{path.rstrip('/')}/memory.oom_control")
        elif controllers == "":
            found.append(f"{root}{path.rstrip('/')}/memory.events")
    found += [f"{root}/memory/memory.oom_control", f"{root}/memory.events"]
    return tuple(dict.fromkeys(found))


def read_oom_kills(paths: tuple[str, ...]) -> int | None:
    """The number of processes the kernel OOM-killed in this memory cgroup, or None when no
    counter is readable (not in a container with a memory controller)."""
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


# How long after the OOM-kill counter rises the worker's death is still blamed on it.
KILL_ATTRIBUTION_S = 2.0


class KernelOOMNannyPlugin(NannyPlugin):
    """Turns a kernel OOM kill of the nanny's worker into the nanny's memory event.

    Polls the container's OOM-kill counter (cheap: one small file) and remembers the worker's
    address while it lives, because by the time the kill is seen the nanny may already be
    starting a new worker under a new address.
    """

    name = "scalable-kernel-oom"
    idempotent = True

    def __init__(self, interval_s: float = 0.1, counter_files: tuple[str, ...] | None = None) -> None:
        self.interval_s = interval_s
        self.counter_files = counter_files
        self._callback: Any = None

    def setup(self, nanny: Any) -> None:
        from tornado.ioloop import PeriodicCallback

        files = self.counter_files or own_oom_counter_files()
        seen = read_oom_kills(files)
        if seen is None:
            return
        state: dict[str, Any] = {"seen": seen, "worker": nanny.worker_address, "pid": nanny.pid, "kill_seen_at": None}

        def poll() -> None:
            kills = read_oom_kills(files)
            now = time.monotonic()
            pid = nanny.pid
            if kills is not None and kills > state["seen"]:
                state["seen"], state["kill_seen_at"] = kills, now
            # A kill in the cgroup counts only if it took the nanny's worker process with it:
            # the process is gone or already replaced (the nanny restarts it at once, but the
            # new worker takes seconds to register, so its old address is still the one to name).
            if state["kill_seen_at"] is not None:
                if pid != state["pid"] and state["worker"]:
                    nanny.log_event("worker-restart-memory", {
                        "worker": state["worker"], "pid": state["pid"], "rss": _cgroup_peak_bytes(),
                        "kernel_oom_kill": True,
                    })
                    state["kill_seen_at"] = None
                elif now - state["kill_seen_at"] > KILL_ATTRIBUTION_S:
                    state["kill_seen_at"] = None
            if state["kill_seen_at"] is None:
                state["pid"] = pid
            if nanny.worker_address:
                state["worker"] = nanny.worker_address

        self._callback = PeriodicCallback(poll, self.interval_s * 1000)
        self._callback.start()

    def teardown(self, nanny: Any) -> None:
        if self._callback is not None:
            self._callback.stop()


def _cgroup_peak_bytes() -> int:
    """The container's peak memory (what it reached before the kill), 0 when unknown."""
    for path in ("/sys/fs/cgroup/memory/memory.max_usage_in_bytes", "/sys/fs/cgroup/memory.peak"):
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    return 0


def sample_workers(dask_scheduler: Any) -> int:
    """For ``Client.run_on_scheduler``: log a sample of every connected worker (memory, tasks).

    The session calls it as it closes, so that a worker still running then has a last sample.
    """
    plugin = dask_scheduler.plugins.get(TelemetrySchedulerPlugin.name)
    if not isinstance(plugin, TelemetrySchedulerPlugin):
        return 0
    now = time.time()
    for address, ws in list(dask_scheduler.workers.items()):
        info = plugin._workers.get(address)
        if info is None:
            continue
        memory = getattr(getattr(ws, "memory", None), "process", None)
        dask_scheduler.log_event(WORKER_TOPIC, {
            **info, "event": "sample", "time": now, "memory_bytes": int(memory) if memory else None,
            "tasks_executing": min(len(ws.processing), ws.nthreads),
        })
    return len(dask_scheduler.workers)


def flush_lost_workers(dask_scheduler: Any) -> int:
    """For ``Client.run_on_scheduler``: report every lost worker now (see ``flush``)."""
    plugin = dask_scheduler.plugins.get(TelemetrySchedulerPlugin.name)
    return plugin.flush() if isinstance(plugin, TelemetrySchedulerPlugin) else 0


@dataclass
class _Submitted:
    task: str
    tag: str | None
    input_features: dict[str, Any]
    submitted_at: float
    #: start times of the executions already recorded (live and replayed events meet here)
    recorded: set[float] = field(default_factory=set)
    #: no longer pending work: finished (a failed task may still be retried) or cancelled
    done: bool = False
    cancelled: bool = False


class TelemetryCollector:
    """Client side: joins what was submitted with what the workers report, and records it.

    ``sink`` is called with each :class:`TaskObservation` (a run writer's ``append``).
    Thread-safe: events arrive on the client's event loop, the session reads pending work
    from its scaling thread.

    A task is kept only while a record of it may still come: it is dropped once it has
    succeeded or, cancelled, is not running, so a long session holds its tasks in flight
    and those that failed (Dask may retry them), not every task it ever submitted.
    """

    def __init__(self, run_id: str, sink: Callable[[TaskObservation], Any]) -> None:
        self.run_id = run_id
        self._sink = sink
        self._lock = threading.Lock()
        self._submitted: dict[str, _Submitted] = {}
        self._running: dict[str, tuple[str, float]] = {}
        self.recorded = 0
        self.submitted_per_tag: dict[str | None, int] = {}
        #: worker resource name -> tag, to tell a worker's group from its resources
        self.worker_tags: dict[str, str] = {}
        self._worker_events: set[tuple[str, str, float]] = set()
        self.workers_recorded = 0

    def __len__(self) -> int:
        """Tasks held: in flight, failed, or cancelled while running."""
        with self._lock:
            return len(self._submitted)

    def register(self, key: str, task: str, tag: str | None, input_features: Mapping[str, Any], submitted_at: float) -> None:
        """Remember a submitted task so that its worker events can be attributed."""
        with self._lock:
            if key in self._submitted:
                return
            self._submitted[key] = _Submitted(task, tag, dict(input_features), submitted_at)
            self.submitted_per_tag[tag] = self.submitted_per_tag.get(tag, 0) + 1

    def forget(self, key: str) -> None:
        """A cancelled task: no longer pending; dropped unless it runs (its record is still to come)."""
        with self._lock:
            sub = self._submitted.get(key)
            if sub is None:
                return
            sub.done = sub.cancelled = True
            if key not in self._running:
                del self._submitted[key]

    def pending(self) -> dict[str | None, list[dict[str, Any]]]:
        """Per tag, the submitted tasks that have not finished, in submission order.

        Each is ``{"task", "input_features"}``, plus ``"started_at"`` (epoch seconds) once a
        worker has reported it started, so that the scaler knows how long it has run.
        """
        out: dict[str | None, list[dict[str, Any]]] = {}
        with self._lock:
            for key, sub in self._submitted.items():
                if not sub.done:
                    item: dict[str, Any] = {"task": sub.task, "input_features": sub.input_features}
                    running = self._running.get(key)
                    if running is not None:
                        item["started_at"] = running[1]
                    out.setdefault(sub.tag, []).append(item)
        return out

    def handle(self, event: tuple[float, Mapping[str, Any]]) -> None:
        """Handler for :data:`TASK_TOPIC` and :data:`LOST_TOPIC` events."""
        _, msg = event
        if not isinstance(msg, Mapping):
            return
        if "phase" in msg:
            if msg["phase"] == "started":
                key, started = str(msg["key"]), float(msg["time"])
                with self._lock:
                    sub = self._submitted.get(key)
                    if sub is not None and not sub.done and started not in sub.recorded:
                        self._running[key] = (str(msg["worker"]), started)
            elif msg["phase"] == "finished":
                self._finished(msg)
        elif "worker" in msg and "memory" in msg:
            self._lost(msg)

    def handle_worker(self, event: tuple[float, Mapping[str, Any]]) -> None:
        """Handler for :data:`WORKER_TOPIC`: a worker joined, left or was sampled."""
        _, msg = event
        if not isinstance(msg, Mapping) or "worker" not in msg or "time" not in msg:
            return
        ident = (str(msg["worker"]), str(msg.get("event")), float(msg["time"]))
        with self._lock:
            if ident in self._worker_events:
                return
            self._worker_events.add(ident)  # a few per worker: replayed events are recognised
        resources = msg.get("resources") or {}
        tag = next((self.worker_tags[r] for r in resources if r in self.worker_tags), None)
        self._sink(WorkerObservation(
            run_id=self.run_id, time=float(msg["time"]), worker=str(msg.get("name") or msg["worker"]), tag=tag,
            memory_bytes=msg.get("memory_bytes"), tasks_executing=msg.get("tasks_executing"),
            resources=Resources(cpus=msg.get("nthreads"), memory_bytes=msg.get("memory_limit")),
        ))
        with self._lock:
            self.workers_recorded += 1

    def _finished(self, msg: Mapping[str, Any]) -> None:
        key = str(msg["key"])
        started = float(msg["started_at"])
        with self._lock:
            sub = self._submitted.get(key)
            if sub is None or started in sub.recorded:
                return
            sub.recorded.add(started)
            self._running.pop(key, None)
            sub.done = True
            if msg["state"] == TaskState.succeeded.value or sub.cancelled:
                del self._submitted[key]
        self._record(self._observation(
            sub, key,
            started_at=msg["started_at"],
            finished_at=msg["finished_at"],
            duration_s=max(0.0, msg["duration_s"]),
            cpu_seconds=msg.get("cpu_seconds"),
            peak_memory_bytes=msg.get("peak_memory_bytes"),
            worker_resources=Resources(cpus=msg.get("nthreads"), memory_bytes=msg.get("memory_limit")),
            state=msg["state"],
            worker=msg.get("worker_name") or msg.get("worker"),
        ))

    def _observation(self, sub: _Submitted, key: str, **observed: Any) -> TaskObservation:
        """What was submitted joined with what was observed of its execution."""
        return TaskObservation(
            run_id=self.run_id, task=sub.task, tag=sub.tag, key=key, input_features=sub.input_features,
            submitted_at=sub.submitted_at, **observed,
        )

    def _lost(self, msg: Mapping[str, Any]) -> None:
        worker = str(msg["worker"])
        state = TaskState.oom_killed if msg.get("memory") else TaskState.erred
        records = []
        with self._lock:
            for key, (where, started) in list(self._running.items()):
                sub = self._submitted.get(key)
                if where != worker or sub is None or started in sub.recorded:
                    continue
                sub.recorded.add(started)
                del self._running[key]
                if sub.cancelled:
                    del self._submitted[key]
                records.append(self._observation(
                    sub, key,
                    started_at=started,
                    finished_at=float(msg["time"]),
                    duration_s=max(0.0, float(msg["time"]) - started),
                    peak_memory_bytes=msg.get("rss") or None,
                    state=state,
                    worker=worker,
                ))
        for record in records:
            self._record(record)

    def _record(self, record: TaskObservation) -> None:
        self._sink(record)
        with self._lock:
            self.recorded += 1

    def replay(self, events: Mapping[str, Any]) -> None:
        """Record what the live subscription missed, from the scheduler's event log.

        ``events`` maps topic to ``[(time, msg), ...]`` as ``Client.get_events`` returns it;
        records already written are recognised by key and start time and skipped.
        """
        for topic in (TASK_TOPIC, LOST_TOPIC):
            for event in events.get(topic, ()):
                self.handle(event)
        for event in events.get(WORKER_TOPIC, ()):
            self.handle_worker(event)
