"""The nanny-side detection of kernel OOM kills: which counter file a process reads, and the
verdict the poll gives for a kill that took the worker and one that did not."""

from __future__ import annotations

import asyncio

from scalable.telemetry.dask_plugin import KernelOOMNannyPlugin, own_oom_counter_files, read_oom_kills


def test_counter_files_prefer_the_own_cgroup_then_the_container_root(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("9:pids:/\n4:memory:/kubepods/pod1/abc\n0::/\n")
    files = own_oom_counter_files(str(proc), root="/cg")
    assert files[0] == "/cg/memory/kubepods/pod1/abc/memory.oom_control"
    assert "/cg/memory/memory.oom_control" in files and "/cg/memory.events" in files
    assert len(files) == len(set(files))


def test_read_oom_kills_parses_v1_and_v2_and_says_none_without_a_counter(tmp_path):
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    v2 = tmp_path / "memory.events"
    v2.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    assert read_oom_kills((str(tmp_path / "missing"), str(v1))) == 3
    assert read_oom_kills((str(v2),)) == 2
    assert read_oom_kills((str(tmp_path / "missing"),)) is None


class _Nanny:
    """The two things the plugin reads of a nanny, and what it logs."""

    def __init__(self) -> None:
        self.worker_address = "tcp://198.18.0.20:40000"
        self.pid: int | None = 100
        self.events: list[tuple[str, dict]] = []

    def log_event(self, topic: str, msg: dict) -> None:
        self.events.append((topic, msg))


async def _run_plugin(tmp_path, scenario) -> _Nanny:
    counter = tmp_path / "memory.oom_control"
    counter.write_text("oom_kill 0\n")
    nanny = _Nanny()
    plugin = KernelOOMNannyPlugin(interval_s=0.02, counter_files=(str(counter),))
    plugin.setup(nanny)
    try:
        await scenario(counter, nanny)
    finally:
        plugin.teardown(nanny)
    return nanny


async def test_a_kill_that_took_the_worker_is_reported_under_the_dead_workers_address(tmp_path):
    async def kill(counter, nanny):
        await asyncio.sleep(0.1)
        counter.write_text("oom_kill 1\n")
        await asyncio.sleep(0.05)
        nanny.pid = None  # reaped a moment after the counter rose
        await asyncio.sleep(0.01)
        nanny.pid = 101  # restarted at once; the new worker registers seconds later
        await asyncio.sleep(0.1)
        nanny.worker_address = "tcp://198.18.0.20:40001"
        await asyncio.sleep(0.2)

    nanny = await _run_plugin(tmp_path, kill)
    assert [t for t, _ in nanny.events] == ["worker-restart-memory"]
    assert nanny.events[0][1]["worker"] == "tcp://198.18.0.20:40000" and nanny.events[0][1]["pid"] == 100


async def test_a_kill_of_another_process_in_the_cgroup_is_not_blamed_on_the_worker(tmp_path):
    async def other(counter, nanny):
        await asyncio.sleep(0.1)
        counter.write_text("oom_kill 1\n")
        await asyncio.sleep(0.3)

    nanny = await _run_plugin(tmp_path, other)
    assert nanny.events == []
