"""Prometheus answers are checked before they can move replicas.

A real aiohttp server on loopback plays Prometheus (and a scheduler's /metrics), so the client
is exercised over HTTP with real timeouts and refused connections, not through a mock.
"""

import asyncio

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from scalable.controller.prometheus import (
    MetricsUnavailable,
    PrometheusClient,
    SchedulerMetrics,
    parse_scheduler_metrics,
    render_queries,
)
from scalable.controller.resources import PrometheusQueries
from tests.support.testenv import free_port


def _vector(*values):
    return {"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [1700000000.0, v]} for v in values]}}


class FakeProm:
    """Answers per query substring; ``answers[key]`` is (http status, json body) or a delay."""

    def __init__(self):
        self.answers = {}
        self.seen = []

    async def handle(self, request):
        query = request.query["query"]
        self.seen.append(query)
        for key, answer in self.answers.items():
            if key in query:
                if isinstance(answer, float):
                    await asyncio.sleep(answer)
                    return web.json_response(_vector("1"))
                status, body = answer
                return web.json_response(body, status=status)
        return web.json_response(_vector())


@pytest_asyncio.fixture(loop_scope="function")
async def prom():
    fake = FakeProm()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.handle)
    app.router.add_get("/metrics", lambda request: web.Response(text=fake.answers.get("/metrics", "")))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield fake, f"http://127.0.0.1:{port}", session
    await runner.cleanup()


QUERIES = PrometheusQueries()


async def test_queue_metrics_are_read_and_templated(prom):
    fake, url, session = prom
    fake.answers = {'state=~"queued': (200, _vector("12")), 'state="processing"': (200, _vector("4")),
                    "dask_scheduler_workers": (200, _vector("2"))}
    metrics = await PrometheusClient(url, session).queue_metrics(QUERIES, "sim", "team-a")
    assert (metrics.queued, metrics.processing, metrics.workers, metrics.source) == (12, 4, 2, "prometheus")
    assert all('namespace="team-a"' in q and 'dask_org_cluster_name="sim"' in q for q in fake.seen)


async def test_empty_vectors_are_no_data(prom):
    fake, url, session = prom
    with pytest.raises(MetricsUnavailable) as info:
        await PrometheusClient(url, session).queue_metrics(QUERIES, "sim", "team-a")
    assert info.value.reason == "NoData"


@pytest.mark.parametrize("value, reason", [("NaN", "BadValue"), ("+Inf", "BadValue"), ("-3", "BadValue"),
                                           ("1e12", "BadValue"), ("many", "BadValue")])
async def test_nonsense_values_are_refused(prom, value, reason):
    fake, url, session = prom
    fake.answers = {"": (200, _vector(value))}
    with pytest.raises(MetricsUnavailable) as info:
        await PrometheusClient(url, session).query("up", "q")
    assert info.value.reason == reason


async def test_several_series_are_refused_as_ambiguous(prom):
    fake, url, session = prom
    fake.answers = {"": (200, _vector("1", "2"))}
    with pytest.raises(MetricsUnavailable, match="sum"):
        await PrometheusClient(url, session).query("dask_scheduler_tasks")


async def test_http_errors_and_query_errors(prom):
    fake, url, session = prom
    fake.answers = {"bad": (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
                    "down": (503, {"status": "error"})}
    client = PrometheusClient(url, session)
    with pytest.raises(MetricsUnavailable) as info:
        await client.query("bad(")
    assert info.value.reason == "HTTPClientError" and "parse error" not in info.value.message
    with pytest.raises(MetricsUnavailable):
        await client.query("down")


async def test_a_slow_prometheus_times_out(prom):
    fake, url, session = prom
    fake.answers = {"slow": 2.0}
    with pytest.raises(MetricsUnavailable) as info:
        await PrometheusClient(url, session, timeout=0.2).query("slow")
    assert info.value.reason == "Timeout"


async def test_a_refused_connection_is_unreachable():
    port = free_port()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(MetricsUnavailable) as info:
            await PrometheusClient(f"http://127.0.0.1:{port}", session, timeout=2).query("up")
    assert info.value.reason == "Unreachable"


SCHEDULER_TEXT = """\
# HELP dask_scheduler_workers Number of workers known by scheduler
# TYPE dask_scheduler_workers gauge
dask_scheduler_workers{state="idle"} 1.0
dask_scheduler_workers{state="saturated"} 2.0
# HELP dask_scheduler_tasks Number of tasks known by scheduler
# TYPE dask_scheduler_tasks gauge
dask_scheduler_tasks{state="released"} 0.0
dask_scheduler_tasks{state="waiting"} 3.0
dask_scheduler_tasks{state="no-worker"} 1.0
dask_scheduler_tasks{state="queued"} 10.0
dask_scheduler_tasks{state="processing"} 6.0
dask_scheduler_tasks{state="memory"} 40.0
dask_scheduler_tasks{state="erred"} 0.0
"""


async def test_scheduler_fallback_reads_its_metrics(prom):
    fake, url, session = prom
    fake.answers["/metrics"] = SCHEDULER_TEXT
    metrics = await SchedulerMetrics(url, session).queue_metrics()
    assert (metrics.queued, metrics.processing, metrics.workers, metrics.source) == (14, 6, 3, "scheduler")


def test_scheduler_without_task_metrics_is_unavailable():
    with pytest.raises(MetricsUnavailable, match="prometheus_client"):
        parse_scheduler_metrics("# nothing here\n")


def test_templates_keep_promql_dollars():
    rendered = render_queries({"q": 'x{cluster="$cluster"} and on() vector($unknown)'}, "c", "n")
    assert rendered["q"] == 'x{cluster="c"} and on() vector($unknown)'
