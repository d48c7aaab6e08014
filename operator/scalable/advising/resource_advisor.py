"""ResourceAdvisor: deterministic, explainable recommendations from a task's own history.

It is the baseline everything else is measured against and the answer of last resort, so it
stays simple enough to explain in one line: a percentile of what the task used, widened
while history is short, never below a minimum, and never below what an OOM kill proved
necessary. It learns only from observed usage, never from what was requested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from scalable.advising.estimators import (
    Chain,
    History,
    Minimum,
    OOMBump,
    Percentile,
    SafetyMargin,
    ShortHistoryWidening,
    oom_floor,
)
from scalable.advising.recommendation import Recommendation, after_oom_kill
from scalable.advising.arguments import check_coverage, existing_runs_dir
from scalable.units import format_memory, parse_cpu, parse_memory

__all__ = ["ResourceAdvisor", "TARGETS", "USAGE_STATES", "usage_columns"]

TARGETS = (None, "memory", "cpus", "duration")
#: runs whose usage is a full measurement of what the task needs
USAGE_STATES = ("succeeded", "erred")
REQUIRED_COLUMNS = ("task", "state", "peak_memory_bytes", "cpu_seconds", "duration_s")


@dataclass(frozen=True)
class _TaskHistory:
    memory: History
    cpus: History
    duration: np.ndarray


def usage_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Observed memory, cpus and duration per row, NaN where not a usable observation.

    CPUs used are ``cpu_seconds / duration_s``; runs that did not finish normally (OOM-killed,
    cancelled) are not measurements of need and come out as NaN.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"task frame lacks column(s) {', '.join(missing)}")
    usable = frame["state"].astype(str).isin(USAGE_STATES).to_numpy()
    duration = frame["duration_s"].to_numpy(dtype=float, na_value=np.nan)
    cpu_seconds = frame["cpu_seconds"].to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        cpus = np.where(duration > 0, cpu_seconds / duration, np.nan)
    memory = frame["peak_memory_bytes"].to_numpy(dtype=float, na_value=np.nan)
    return pd.DataFrame(
        {
            "memory": np.where(usable, memory, np.nan),
            "cpus": np.where(usable, cpus, np.nan),
            "duration": np.where(usable, duration, np.nan),
        },
        index=frame.index,
    )


class ResourceAdvisor(BaseEstimator):
    """Percentile-of-usage recommendations per task, composed from plain estimators.

    Parameters
    ----------
    coverage:
        The percentile of observed usage to recommend (0.95 = p95).
    safety_margin:
        Factor on the percentile (VPA uses 1.15 on p90); 1.0 leaves the percentile alone, so
        the answer is what the basis says.
    short_history:
        Below this many runs the estimate is widened by ``1 + 1/n`` (VPA's confidence
        widening, counted in runs). 0 turns widening off.
    min_memory, min_cpus:
        Floors (VPA: 250 MiB, 25 millicores). Any memory unit is accepted.
    default_memory, default_cpus:
        The answer for a task never seen; deliberately generous, and the basis says so.
    use_tag_history:
        For a task never seen, answer from the runs of its tag (worker group or user; given
        with the request, or the tag the task last ran with) before giving up and answering
        with the default.
    """

    def __init__(
        self,
        coverage: float = 0.95,
        safety_margin: float = 1.0,
        short_history: int = 20,
        min_memory: str | int = "250Mi",
        min_cpus: float | str = 0.025,
        default_memory: str | int = "4Gi",
        default_cpus: int = 1,
        use_tag_history: bool = True,
    ) -> None:
        self.coverage = coverage
        self.safety_margin = safety_margin
        self.short_history = short_history
        self.min_memory = min_memory
        self.min_cpus = min_cpus
        self.default_memory = default_memory
        self.default_cpus = default_cpus
        self.use_tag_history = use_tag_history

    @classmethod
    def from_history(cls, runs_dir: Any = None, **params: Any) -> "ResourceAdvisor":
        """Fit on every task observation under ``runs_dir`` (default ``./.scalable/runs``)."""
        from scalable.telemetry.loader import load_tasks

        return cls(**params).fit(load_tasks(existing_runs_dir(runs_dir)).frame)

    def fit(self, frame: pd.DataFrame, y: Any = None) -> "ResourceAdvisor":
        """Collect, per task (and per tag), the observed usage of every run in ``frame``."""
        self._check_params()
        self.tasks_ = _histories(frame, "task")
        self.tags_ = _histories(frame, "tag") if self.use_tag_history and "tag" in frame.columns else {}
        self.task_tags_ = _last_tags(frame) if self.use_tag_history else {}
        self.n_observations_ = int(len(frame))
        self._cache: dict[tuple, Recommendation] = {}
        return self

    def update(self, frame: pd.DataFrame) -> "ResourceAdvisor":
        """Replace the history with ``frame``, everything known now (the online replay hands
        over the whole known history between refits). Equivalent to ``fit`` here, since a
        percentile of history has nothing to learn beyond the history itself."""
        return self.fit(frame)

    def extend(self, frame: pd.DataFrame) -> "ResourceAdvisor":
        """Add only newly finished observations to what is known."""
        if not hasattr(self, "tasks_"):
            return self.fit(frame)
        _merge(self.tasks_, _histories(frame, "task"))
        if self.use_tag_history and "tag" in frame.columns:
            _merge(self.tags_, _histories(frame, "tag"))
            self.task_tags_.update(_last_tags(frame))
        self.n_observations_ += int(len(frame))
        self._cache = {}
        return self

    def history_size(self, task: str) -> int:
        """How many usable memory observations back the answer for ``task``."""
        history = self.tasks_.get(task)
        return 0 if history is None else history.memory.n

    def recommend(
        self,
        task: str,
        target: str | None = None,
        coverage: float | None = None,
        input_features: Mapping[str, Any] | None = None,
        tag: str | None = None,
        failed_memory: str | int | None = None,
    ) -> Recommendation:
        """Resources for the next run of ``task`` (running with ``tag``, if known).

        ``input_features`` is accepted so that callers can treat both advisors alike; a
        percentile of history does not depend on them. ``target`` chooses which quantity the
        basis explains ("memory" by default, "cpus" or "duration"). ``failed_memory``: the last
        attempt was OOM-killed at that memory; a percentile has no tail calibration to size the
        retry from, so the memory is doubled (see :func:`~scalable.advising.recommendation.after_oom_kill`).
        """
        if failed_memory is not None:
            plain = self.recommend(task, target, coverage, input_features, tag)
            return after_oom_kill(plain, parse_memory(failed_memory))
        if target not in TARGETS:
            raise ValueError(f"target must be one of memory, cpus, duration or None, not {target!r}")
        coverage = self.coverage if coverage is None else coverage
        key = (task, target, coverage, tag)
        cached = self._cache.get(key) if hasattr(self, "_cache") else None
        if cached is not None:
            return cached
        rec = self._recommend(task, target, coverage, tag)
        self._cache[key] = rec
        return rec

    def recommend_batch(self, requests: Iterable[Mapping[str, Any] | str]) -> list[Recommendation]:
        """One Recommendation per request, in order; a request is a task name or a mapping with
        ``task`` (and optionally ``tag``, ``target``, ``coverage``, ``input_features``)."""
        out = []
        for request in requests:
            if isinstance(request, str):
                out.append(self.recommend(request))
            else:
                out.append(
                    self.recommend(
                        request["task"],
                        target=request.get("target"),
                        coverage=request.get("coverage"),
                        tag=request.get("tag"),
                    )
                )
        return out

    def _check_params(self) -> None:
        check_coverage(self.coverage)
        self.min_memory_bytes_ = parse_memory(self.min_memory)
        self.min_cpus_ = parse_cpu(self.min_cpus)
        self.default_memory_bytes_ = parse_memory(self.default_memory)

    def _memory_chain(self, coverage: float) -> Chain:
        steps: list[Any] = [Percentile(coverage)]
        if self.safety_margin != 1.0:
            steps.append(SafetyMargin(self.safety_margin))
        if self.short_history:
            steps.append(ShortHistoryWidening(until=self.short_history))
        steps += [Minimum(self.min_memory_bytes_, "bytes"), OOMBump()]
        return Chain(tuple(steps))

    def _cpu_chain(self, coverage: float) -> Chain:
        steps: list[Any] = [Percentile(coverage)]
        if self.safety_margin != 1.0:
            steps.append(SafetyMargin(self.safety_margin))
        if self.short_history:
            steps.append(ShortHistoryWidening(until=self.short_history))
        steps.append(Minimum(self.min_cpus_, "cpus"))
        return Chain(tuple(steps))

    def _recommend(self, task: str, target: str | None, coverage: float, tag: str | None = None) -> Recommendation:
        if not hasattr(self, "tasks_"):
            raise RuntimeError("this ResourceAdvisor is not fitted yet: call fit(frame) or from_history()")
        check_coverage(coverage)
        sources = self._sources(task, tag)

        def first(recorded: Callable[[_TaskHistory], Any]) -> tuple[_TaskHistory | None, str, str]:
            return next(((h, name, p) for h, name, p in sources if h is not None and recorded(h)), (None, "default", ""))

        memory_history, memory_source, memory_prefix = first(lambda h: h.memory.n or h.memory.oom_floor)
        cpu_history, _, cpu_prefix = first(lambda h: h.cpus.n)
        duration_history, _, duration_prefix = first(lambda h: h.duration.size)
        if memory_history is None and cpu_history is None and duration_history is None:
            return self._default(task, coverage)
        if memory_history is None:
            memory = float(max(self.default_memory_bytes_, self.min_memory_bytes_))
            memory_basis = f"no memory usage recorded: default {format_memory(int(memory))}"
        else:
            memory, memory_basis = self._memory_chain(coverage).explain(memory_history.memory)
            if memory_history.memory.n == 0:
                memory = max(memory, self.default_memory_bytes_)
                memory_basis = f"no usage recorded; {memory_basis}"
            memory_basis = memory_prefix + memory_basis
        if cpu_history is not None:
            cpus_exact, cpu_basis = self._cpu_chain(coverage).explain(cpu_history.cpus)
            cpu_basis = cpu_prefix + cpu_basis
        else:
            cpus_exact, cpu_basis = float(self.default_cpus), f"no cpu usage recorded: default {self.default_cpus}"
        if duration_history is not None:
            duration = float(np.median(duration_history.duration))
            duration_basis = f"{duration_prefix}median duration of {duration_history.duration.size} runs"
        else:
            duration, duration_basis = None, "no duration recorded"
        basis = {None: memory_basis, "memory": memory_basis, "cpus": cpu_basis, "duration": duration_basis}[target]
        n = memory_history.memory.n if memory_history is not None else 0
        median = float(np.median(memory_history.memory.values)) if n else memory
        return Recommendation(
            cpus=_whole_cpus(cpus_exact),
            memory_bytes=int(math.ceil(memory)),
            confidence=round(n / (n + max(self.short_history, 1)), 2),
            method="percentile",
            basis=basis,
            predicted_duration_s=None if duration is None else round(duration, 3),
            interval=(int(median), int(math.ceil(memory))),
            coverage=coverage,
            task=task,
            cpus_exact=cpus_exact,
            details={"history": n, "memory_basis": memory_basis, "cpu_basis": cpu_basis,
                     "memory_source": memory_source},
        )

    def _sources(self, task: str, tag: str | None) -> list[tuple[_TaskHistory | None, str, str]]:
        """Where usage may come from, in order, named, with the basis prefix each needs: the
        task's own runs, then its tag's. Each quantity is taken from the first that recorded it
        (a trace may log times but no memory: those runs still say how long the task takes)."""
        sources: list[tuple[_TaskHistory | None, str, str]] = [(self.tasks_.get(task), "task", "")]
        if self.use_tag_history:
            tag = tag if tag is not None else self.task_tags_.get(task)
            if tag is not None:
                sources.append((self.tags_.get(tag), "tag", f"no history for task {task!r}; runs with tag {tag!r}: "))
        return sources

    def memory_percentile(self, task: str, q: float = 0.5, tag: str | None = None) -> tuple[float, str, int] | None:
        """The ``q`` percentile of the peak memory the task's runs recorded (else its tag's),
        the first step of the memory chain alone: no margin, widening or minimum. Returns the
        bytes, where they came from ("task" or "tag") and how many runs; None when neither
        recorded memory. A caller that calibrates its own margin starts from this."""
        if not hasattr(self, "tasks_"):
            raise RuntimeError("this ResourceAdvisor is not fitted yet: call fit(frame) or from_history()")
        for history, source, _ in self._sources(task, tag):
            if history is not None and history.memory.n:
                return Percentile(q).apply(0.0, history.memory), source, history.memory.n
        return None

    def _default(self, task: str, coverage: float) -> Recommendation:
        memory = max(self.default_memory_bytes_, self.min_memory_bytes_)
        cpus = max(int(self.default_cpus), 1)
        return Recommendation(
            cpus=cpus,
            memory_bytes=memory,
            confidence=0.0,
            method="default",
            basis=f"no history for task {task!r}: safe default of {cpus} cpu and {format_memory(memory)}",
            interval=None,
            coverage=coverage,
            task=task,
            cpus_exact=float(cpus),
            details={"history": 0},
        )

    def to_state(self) -> dict[str, Any]:
        """Plain lists and arrays (for the model store; no pickling)."""
        return {"params": self.get_params(), "tasks": _pack(self.tasks_), "tags": _pack(self.tags_),
                "task_tags": dict(self.task_tags_), "n_observations": self.n_observations_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "ResourceAdvisor":
        advisor = cls(**state["params"])
        advisor._check_params()
        advisor.tasks_ = _unpack(state["tasks"])
        advisor.tags_ = _unpack(state["tags"])
        advisor.task_tags_ = dict(state["task_tags"])
        advisor.n_observations_ = int(state["n_observations"])
        advisor._cache = {}
        return advisor


def _whole_cpus(cpus: float) -> int:
    return max(1, int(math.ceil(round(cpus, 6))))


def _histories(frame: pd.DataFrame, by: str) -> dict[str, _TaskHistory]:
    if len(frame) == 0:
        return {}
    usage = usage_columns(frame)
    keys = frame[by]
    oom = frame["state"].astype(str).to_numpy() == "oom_killed"
    worker_memory = (
        frame["worker_memory_bytes"].to_numpy(dtype=float, na_value=np.nan)
        if "worker_memory_bytes" in frame.columns
        else np.full(len(frame), np.nan)
    )
    peak = frame["peak_memory_bytes"].to_numpy(dtype=float, na_value=np.nan)
    floors = np.where(oom, oom_floor(peak, worker_memory), 0.0)
    present = keys.notna().to_numpy()
    codes, names = pd.factorize(keys[present].astype(str), sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    def split(values: np.ndarray) -> list[np.ndarray]:
        return np.split(values[present][order], bounds)
    memory, cpus, duration = (split(usage[c].to_numpy()) for c in ("memory", "cpus", "duration"))
    floor = np.zeros(len(names))
    np.maximum.at(floor, codes, floors[present])
    first_codes = codes[order][np.r_[0, bounds]] if len(codes) else np.zeros(0, dtype=np.int64)
    return {
        str(names[code]): _TaskHistory(
            memory=History.of(memory[i], float(floor[code])),
            cpus=History.of(cpus[i]),
            duration=np.sort(duration[i][np.isfinite(duration[i])]),
        )
        for i, code in enumerate(first_codes.tolist())
    }


def _last_tags(frame: pd.DataFrame) -> dict[str, str]:
    if "tag" not in frame.columns or len(frame) == 0:
        return {}
    tags = frame[["task", "tag"]].dropna()
    return {str(k): str(v) for k, v in tags.groupby("task", sort=False)["tag"].last().items()}


def _merge(into: dict[str, _TaskHistory], new: dict[str, _TaskHistory]) -> None:
    for name, history in new.items():
        old = into.get(name)
        if old is None:
            into[name] = history
            continue
        into[name] = _TaskHistory(
            memory=History.of(np.concatenate([old.memory.values, history.memory.values]),
                              max(old.memory.oom_floor, history.memory.oom_floor)),
            cpus=History.of(np.concatenate([old.cpus.values, history.cpus.values])),
            duration=np.sort(np.concatenate([old.duration, history.duration])),
        )


def _pack(histories: Mapping[str, _TaskHistory]) -> dict[str, Any]:
    names = list(histories)
    def flat(get):
        arrays = [get(h) for h in histories.values()]
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        values = np.concatenate(arrays) if arrays else np.zeros(0)
        return {"sizes": sizes, "values": values.astype(np.float64)}
    return {
        "names": names,
        "memory": flat(lambda h: h.memory.values),
        "cpus": flat(lambda h: h.cpus.values),
        "duration": flat(lambda h: h.duration),
        "oom_floor": np.array([h.memory.oom_floor for h in histories.values()], dtype=np.float64),
    }


def _unpack(packed: Mapping[str, Any]) -> dict[str, _TaskHistory]:
    def split(part):
        sizes = np.asarray(part["sizes"], dtype=np.int64)
        return np.split(np.asarray(part["values"], dtype=np.float64), np.cumsum(sizes)[:-1]) if sizes.size else []
    memory, cpus, duration = split(packed["memory"]), split(packed["cpus"]), split(packed["duration"])
    floors = np.asarray(packed["oom_floor"], dtype=np.float64)
    return {
        str(name): _TaskHistory(History(memory[i], float(floors[i])), History(cpus[i]), duration[i])
        for i, name in enumerate(packed["names"])
    }
