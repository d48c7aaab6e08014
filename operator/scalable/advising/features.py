"""Turning task observations into model features, identically at training and at recommend time.

What predicts a task's next peak memory best is what the same task, the same user (tag) and
the same configuration (task plus identical inputs) used before. Those history statistics are
computed *as of the moment a run was submitted*: for a training row only runs of the group
that had finished before it was submitted count, exactly what is known when the advisor is
asked. Computing them over everything that finished before the row finished would leak
siblings of a batch into each other, and the model would learn to trust a signal it never
has in use.

Everything is vectorised: groups are encoded once, statistics are prefix sums over runs
sorted by (group, end time), and an as-of lookup is one ``searchsorted``.

Identity is encoded without Python's salted ``hash()``: tasks and categories get ordinal codes
fitted on the training data (sorted, so they are reproducible), configurations are keyed by
a canonical string of their inputs, and the state is kept as plain arrays and lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from scalable.advising.resource_advisor import usage_columns

__all__ = ["FeatureEncoder", "GroupStats", "HistoryLog", "FEATURE_PREFIX", "GROUPS", "TARGET_COLUMNS", "log_targets"]

FEATURE_PREFIX = "feature."
#: the groups whose history describes a task: itself, its tag (user or worker group), and
#: the task with exactly these inputs
GROUPS = ("task", "tag", "config")
#: log-scale quantities whose history is summarised
TARGET_COLUMNS = ("memory", "duration", "cpus")
_STATS = ("n", "mean", "std", "last", "last3", "max")
_SEP = "\x1f"
#: categorical inputs with at most this many values are given to the model as categories
MAX_CATEGORIES = 200
#: inputs with more distinct values than this (continuous sizes, seeds) are left out of the
#: configuration key: exact repeats of them are too rare to make a useful group
MAX_CONFIG_VALUES = 1000


def log_targets(frame: pd.DataFrame) -> pd.DataFrame:
    """Natural log of observed memory, duration and cpus; NaN where not a usable observation."""
    usage = usage_columns(frame)
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame(
            {name: np.log(np.where(usage[name] > 0, usage[name], np.nan)) for name in TARGET_COLUMNS},
            index=frame.index,
        )


def _canonical(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(float(value))
    return str(value)


def _group_codes(frame: pd.DataFrame, config_names: Sequence[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Integer group codes per row and the key string of each code, for every group.

    Codes are hash-factorised integers (no per-row strings); only the distinct configurations
    get their canonical key string built, once.
    """
    task_codes, task_uniques = pd.factorize(frame["task"].astype(str))
    tasks = [str(t) for t in task_uniques]
    if "tag" in frame.columns:
        tag_values = frame["tag"].astype(object).where(frame["tag"].notna(), "").astype(str)
    else:
        tag_values = pd.Series("", index=frame.index)
    tag_codes, tag_uniques = pd.factorize(tag_values)
    parts = {"task": task_codes}
    canonical: dict[str, list[str]] = {}
    for name in config_names:
        column = frame.get(FEATURE_PREFIX + name)
        if column is None:
            parts[name], canonical[name] = np.full(len(frame), -1), [""]
        else:
            codes, uniques = pd.factorize(column)
            parts[name], canonical[name] = codes, [_canonical(u) for u in uniques] + [""]
    if len(config_names):
        config_codes = pd.DataFrame(parts).groupby(list(parts), sort=False).ngroup().to_numpy()
        _, first = np.unique(config_codes, return_index=True)
        names = sorted(config_names)
        columns = [(f"{_SEP}{name}=", canonical[name], parts[name][first].tolist()) for name in names]
        config_keys = [
            tasks[task_code] + "".join(prefix + canon[codes[i]] for prefix, canon, codes in columns)
            for i, task_code in enumerate(task_codes[first].tolist())
        ]
    else:
        config_codes, config_keys = task_codes, [single_config_key(t, {}, ()) for t in tasks]
    return {
        "task": (task_codes, tasks),
        "tag": (tag_codes, [str(t) for t in tag_uniques]),
        "config": (np.asarray(config_codes), config_keys),
    }


def single_config_key(task: str, features: Mapping[str, Any], names: Sequence[str]) -> str:
    """The same key as :func:`config_keys` for one request, without pandas."""
    return task + "".join(f"{_SEP}{name}={_canonical(features.get(name))}" for name in sorted(names))


@dataclass
class GroupStats:
    """Final history statistics per group value: what is known once every run finished.

    ``table`` has one row per group value (``index`` maps the value to the row) and one
    column per (target, statistic).
    """

    index: dict[str, int]
    table: np.ndarray

    def __post_init__(self) -> None:
        self._keys = pd.Index(list(self.index), dtype=object)

    def rows(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each key, -1 when unknown (one vectorised hash lookup)."""
        if not len(self._keys):
            return np.full(len(keys), -1, dtype=np.int64)
        return self._keys.get_indexer(np.asarray(keys, dtype=object))

    def lookup(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        rows = self.rows(keys)
        out = np.full((len(rows), self.table.shape[1]), np.nan)
        hit = rows >= 0
        out[hit] = self.table[rows[hit]]
        out[~hit, 0::len(_STATS)] = 0.0
        return out

    def row(self, key: str) -> np.ndarray | None:
        position = self.index.get(key)
        return None if position is None else self.table[position]

    def replaced(self, keys: Sequence[str], rows: np.ndarray) -> "GroupStats":
        """A copy with the statistics of ``keys`` replaced (or added) by ``rows``."""
        index = dict(self.index)
        table = self.table
        fresh = [k for k in keys if k not in index]
        if fresh:
            for k in fresh:
                index[k] = len(index)
            table = np.vstack([table, np.empty((len(fresh), table.shape[1]))]) if table.size else np.empty(
                (len(fresh), rows.shape[1]))
        else:
            table = table.copy()
        table[[index[k] for k in keys]] = rows
        return GroupStats(index, table)


@dataclass
class HistoryLog:
    """The group keys, log targets and end times of every known run: what lets
    :meth:`FeatureEncoder.extend_history` recompute only the groups that new runs touched."""

    keys: dict[str, np.ndarray]
    values: np.ndarray
    end_time: np.ndarray

    @classmethod
    def of(cls, encoder: "FeatureEncoder", frame: pd.DataFrame) -> "HistoryLog":
        return cls(encoder.group_keys(frame), log_targets(frame).to_numpy(), frame["end_time"].to_numpy(dtype=float))


def _as_of_stats(
    event_codes: np.ndarray, end_time: np.ndarray, values: np.ndarray, query_codes: np.ndarray, query_time: np.ndarray
) -> np.ndarray:
    """Statistics of ``values`` over the events of the same group (integer codes) that ended
    strictly before each query time: count of finite values, mean, std, last, mean of the
    last three, max (NaN where there is none)."""
    times = np.concatenate([end_time, query_time])
    time_rank = np.unique(times, return_inverse=True)[1].astype(np.int64)
    scale = int(time_rank.max()) + 2 if len(time_rank) else 2
    event_codes = np.asarray(event_codes, dtype=np.int64)
    query_codes = np.asarray(query_codes, dtype=np.int64)
    event_key = event_codes * scale + time_rank[: len(event_codes)]
    query_key = query_codes * scale + time_rank[len(event_codes):]

    n_targets = values.shape[1]
    out = np.full((len(query_codes), n_targets * len(_STATS)), np.nan)
    order = np.argsort(event_key, kind="stable")
    sorted_key = event_key[order]
    sorted_codes = event_codes[order]
    n_codes = int(max(event_codes.max(initial=-1), query_codes.max(initial=-1))) + 1
    group_start = np.searchsorted(sorted_key, np.arange(n_codes, dtype=np.int64) * scale, side="left")[query_codes]
    query_order = np.argsort(query_key, kind="stable")
    position = np.empty(len(query_key), dtype=np.int64)
    position[query_order] = np.searchsorted(sorted_key, query_key[query_order], side="left")

    for t in range(n_targets):
        x = values[order, t]
        finite = np.isfinite(x)
        x0 = np.where(finite, x, 0.0)
        count = np.concatenate([[0], np.cumsum(finite)])
        total = np.concatenate([[0.0], np.cumsum(x0)])
        squares = np.concatenate([[0.0], np.cumsum(x0 * x0)])
        n = count[position] - count[group_start]
        s = total[position] - total[group_start]
        ss = squares[position] - squares[group_start]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = s / n
            std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
        # last finite value and the mean of the last three, within the group
        finite_positions = np.where(finite, np.arange(len(x)), -1)
        last_finite = np.maximum.accumulate(finite_positions) if len(x) else finite_positions
        before = position - 1
        last_index = np.where(before >= 0, last_finite[np.maximum(before, 0)], -1)
        valid_last = (last_index >= group_start) & (n > 0)
        last = np.where(valid_last, x[np.maximum(last_index, 0)], np.nan)
        # the finite values are numbered by ``count``; the last three finite ones before the query
        k = np.minimum(n, 3)
        finite_x = x[finite]
        finite_cum = np.concatenate([[0.0], np.cumsum(finite_x)])
        upto = count[position]
        with np.errstate(divide="ignore", invalid="ignore"):
            last3 = (finite_cum[upto] - finite_cum[upto - k]) / k
        running_max = pd.Series(np.where(finite, x, -np.inf)).groupby(sorted_codes).cummax().to_numpy()
        max_index = np.maximum(before, 0)
        has = (n > 0) & (before >= group_start)
        maximum = np.where(has, running_max[max_index], np.nan)
        base = t * len(_STATS)
        out[:, base + 0] = n
        out[:, base + 1] = np.where(n > 0, mean, np.nan)
        out[:, base + 2] = np.where(n > 1, std, np.nan)
        out[:, base + 3] = last
        out[:, base + 4] = np.where(n > 0, last3, np.nan)
        out[:, base + 5] = maximum
    return out


class FeatureEncoder:
    """Fitted encoding of task observations into a numeric matrix.

    ``fit`` learns the input feature names and kinds, category codes and task codes from the
    training frame; ``history`` computes the per-group history state from a frame of finished
    runs (refreshable without refitting the model); ``transform_training`` gives the as-of
    features of every training row; ``transform_requests`` the features of recommend requests.
    """

    def fit(self, frame: pd.DataFrame) -> "FeatureEncoder":
        self.input_names_: list[str] = sorted(c[len(FEATURE_PREFIX):] for c in frame.columns if c.startswith(FEATURE_PREFIX))
        self.numeric_: list[str] = []
        self.categorical_: dict[str, dict[str, int]] = {}
        for name in self.input_names_:
            column = frame[FEATURE_PREFIX + name]
            if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
                self.numeric_.append(name)
            else:
                values = sorted({_canonical(v) for v in column.dropna().unique()})
                self.categorical_[name] = {v: i for i, v in enumerate(values)}
        self.config_names_: list[str] = [
            name for name in self.input_names_ if frame[FEATURE_PREFIX + name].nunique() <= MAX_CONFIG_VALUES
        ]
        tasks = sorted(frame["task"].astype(str).unique())
        self.task_codes_: dict[str, int] = {t: i for i, t in enumerate(tasks)}
        self.feature_names_: list[str] = (
            [f"input:{n}" for n in self.numeric_]
            + [f"input:{n}" for n in self.categorical_]
            + ["task_code"]
            + [f"{g}:{t}:{s}" for g in GROUPS for t in TARGET_COLUMNS for s in _STATS]
        )
        n_inputs = len(self.numeric_) + len(self.categorical_)
        self.categorical_mask_ = np.zeros(len(self.feature_names_), dtype=bool)
        for i, name in enumerate(self.categorical_):
            self.categorical_mask_[len(self.numeric_) + i] = len(self.categorical_[name]) <= MAX_CATEGORIES
        self.n_inputs_ = n_inputs
        return self

    # --- history state ---------------------------------------------------------------------

    def group_keys(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The key string of each row's task, tag and configuration group."""
        keys = {}
        for group, (codes, uniques) in _group_codes(frame, self.config_names_).items():
            keys[group] = np.asarray(uniques, dtype=object)[codes] if len(codes) else np.zeros(0, dtype=object)
        return keys

    def history(self, frame: pd.DataFrame) -> dict[str, GroupStats]:
        """Per-group statistics once every run in ``frame`` is known."""
        values = log_targets(frame).to_numpy()
        end_time = frame["end_time"].to_numpy(dtype=float)
        state: dict[str, GroupStats] = {}
        for group, (codes, uniques) in _group_codes(frame, self.config_names_).items():
            every = np.arange(len(uniques))
            table = _as_of_stats(codes, end_time, values, every, np.full(len(every), np.inf))
            state[group] = GroupStats({k: i for i, k in enumerate(uniques)}, table)
        if "tag" in frame.columns and len(frame):
            tags = frame[["task", "tag"]].dropna()
            last = tags.groupby("task", sort=False)["tag"].last()
            self.task_tags_ = {str(k): _tag_key(v) for k, v in last.items()}
        else:
            self.task_tags_ = {}
        return state

    def extend_history(
        self, state: Mapping[str, GroupStats], log: HistoryLog, new: pd.DataFrame
    ) -> tuple[dict[str, GroupStats], HistoryLog]:
        """``state`` and ``log`` once the runs in ``new`` are known too, recomputing only the
        groups those runs belong to (the same numbers :meth:`history` gives on everything)."""
        added = HistoryLog.of(self, new)
        merged = HistoryLog(
            {g: np.concatenate([log.keys[g], added.keys[g]]) for g in GROUPS},
            np.vstack([log.values, added.values]),
            np.concatenate([log.end_time, added.end_time]),
        )
        out: dict[str, GroupStats] = {}
        for group in GROUPS:
            touched = pd.unique(added.keys[group])
            rows = np.flatnonzero(pd.Index(touched).get_indexer(merged.keys[group]) >= 0)
            codes, uniques = pd.factorize(merged.keys[group][rows])
            every = np.arange(len(uniques))
            table = _as_of_stats(codes, merged.end_time[rows], merged.values[rows], every, np.full(len(every), np.inf))
            out[group] = state[group].replaced([str(k) for k in uniques], table)
        if "tag" in new.columns and len(new):
            ordered = new.sort_values("end_time", kind="stable")[["task", "tag"]].dropna()
            last = ordered.groupby("task", sort=False)["tag"].last()
            self.task_tags_.update({str(k): _tag_key(v) for k, v in last.items()})
        return out, merged

    # --- matrices ----------------------------------------------------------------------------

    def _inputs(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.full((len(frame), self.n_inputs_ + 1), np.nan, dtype=np.float64)
        for i, name in enumerate(self.numeric_):
            column = frame.get(FEATURE_PREFIX + name)
            if column is not None:
                out[:, i] = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        for j, (name, codes) in enumerate(self.categorical_.items()):
            column = frame.get(FEATURE_PREFIX + name)
            if column is not None:
                factor, uniques = pd.factorize(column, use_na_sentinel=True)
                mapped = np.array([codes.get(_canonical(u), np.nan) for u in uniques] + [np.nan], dtype=float)
                out[:, len(self.numeric_) + j] = mapped[factor]
        task_factor, task_uniques = pd.factorize(frame["task"].astype(str))
        mapped = np.array([self.task_codes_.get(t, np.nan) for t in task_uniques] + [np.nan], dtype=float)
        out[:, self.n_inputs_] = mapped[task_factor]
        return out

    def transform_training(self, frame: pd.DataFrame) -> np.ndarray:
        """Features of each row with history as of its submission (no row sees itself or
        any run that finished after it was submitted)."""
        values = log_targets(frame).to_numpy()
        end_time = frame["end_time"].to_numpy(dtype=float)
        submitted = frame["submitted_at"].to_numpy(dtype=float)
        out = np.empty((len(frame), len(self.feature_names_)), dtype=np.float32)
        out[:, : self.n_inputs_ + 1] = self._inputs(frame)
        width = len(TARGET_COLUMNS) * len(_STATS)
        for g, (codes, _) in enumerate(_group_codes(frame, self.config_names_).values()):
            start = self.n_inputs_ + 1 + g * width
            out[:, start : start + width] = _as_of_stats(codes, end_time, values, codes, submitted)
        return out

    def request_frame(
        self, tasks: Sequence[str], features: Sequence[Mapping[str, Any]], tags: Sequence[str | None]
    ) -> pd.DataFrame:
        """A frame with ``task``, ``tag`` and ``feature.*`` columns for recommend requests."""
        known_tags = self.task_tags_
        data: dict[str, Any] = {
            "task": list(tasks),
            "tag": [g if g is not None else known_tags.get(t) for t, g in zip(tasks, tags)],
        }
        for name in self.input_names_:
            data[FEATURE_PREFIX + name] = [f.get(name) for f in features]
        return pd.DataFrame(data)

    def transform_requests(self, frame: pd.DataFrame, state: Mapping[str, GroupStats]) -> np.ndarray:
        keys = self.group_keys(frame)
        parts = [self._inputs(frame)]
        for group in GROUPS:
            parts.append(state[group].lookup(keys[group]))
        return np.hstack(parts).astype(np.float32)

    def transform_one(
        self, task: str, features: Mapping[str, Any], tag: str | None, state: Mapping[str, GroupStats]
    ) -> np.ndarray:
        """The row :meth:`transform_requests` would give for one request, without pandas."""
        row = np.full(len(self.feature_names_), np.nan, dtype=np.float64)
        for i, name in enumerate(self.numeric_):
            row[i] = _to_float(features.get(name))
        for j, (name, codes) in enumerate(self.categorical_.items()):
            value = features.get(name)
            if value is not None:
                row[len(self.numeric_) + j] = codes.get(_canonical(value), np.nan)
        row[self.n_inputs_] = self.task_codes_.get(task, np.nan)
        width = len(TARGET_COLUMNS) * len(_STATS)
        tag_key = _tag_key(tag if tag is not None else self.task_tags_.get(task))
        for g, (group, key) in enumerate(
            (("task", task), ("tag", tag_key), ("config", single_config_key(task, features, self.config_names_)))
        ):
            start = self.n_inputs_ + 1 + g * width
            stats = state[group].row(key)
            if stats is None:
                row[start : start + width : len(_STATS)] = 0.0
            else:
                row[start : start + width] = stats
        return row.astype(np.float32)[None, :]

    def history_count(self, state: Mapping[str, GroupStats], task: str) -> int:
        stats = state["task"].row(task)
        return 0 if stats is None else int(stats[0])

    # --- persistence -------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "input_names": list(self.input_names_),
            "config_names": list(self.config_names_),
            "numeric": list(self.numeric_),
            "categorical": {k: list(v) for k, v in self.categorical_.items()},
            "tasks": list(self.task_codes_),
            "task_tags": dict(self.task_tags_),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "FeatureEncoder":
        encoder = cls()
        names = list(state["input_names"])
        encoder.input_names_ = names
        encoder.config_names_ = list(state["config_names"])
        encoder.numeric_ = list(state["numeric"])
        encoder.categorical_ = {k: {v: i for i, v in enumerate(values)} for k, values in state["categorical"].items()}
        encoder.task_codes_ = {t: i for i, t in enumerate(state["tasks"])}
        encoder.feature_names_ = (
            [f"input:{n}" for n in encoder.numeric_]
            + [f"input:{n}" for n in encoder.categorical_]
            + ["task_code"]
            + [f"{g}:{t}:{s}" for g in GROUPS for t in TARGET_COLUMNS for s in _STATS]
        )
        encoder.n_inputs_ = len(encoder.numeric_) + len(encoder.categorical_)
        encoder.categorical_mask_ = np.zeros(len(encoder.feature_names_), dtype=bool)
        for i, name in enumerate(encoder.categorical_):
            encoder.categorical_mask_[len(encoder.numeric_) + i] = len(encoder.categorical_[name]) <= MAX_CATEGORIES
        encoder.task_tags_ = dict(state["task_tags"])
        return encoder


def pack_history(state: Mapping[str, GroupStats]) -> dict[str, Any]:
    """History state as lists and float arrays, for the model store."""
    return {group: {"keys": list(stats.index), "table": stats.table} for group, stats in state.items()}


def unpack_history(packed: Mapping[str, Any]) -> dict[str, GroupStats]:
    return {
        group: GroupStats({str(k): i for i, k in enumerate(part["keys"])}, np.asarray(part["table"], dtype=float))
        for group, part in packed.items()
    }


def _tag_key(tag: Any) -> str:
    return "" if tag is None or (isinstance(tag, float) and math.isnan(tag)) else str(tag)


def _to_float(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return float(value) if isinstance(value, bool) else np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan
