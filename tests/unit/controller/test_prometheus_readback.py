"""Issue 15, SSRF with read-back: a tenant names a URL; the operator must not fetch what the
admin's policy does not allow, must not follow redirects, and must never copy what a URL
answered into a message (status, Events, logs take only fixed reasons).

A real aiohttp server on loopback poses as a cloud metadata endpoint: every answer carries a
secret, and the tests look for it in every message the client produces.
"""

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from scalable.controller.prometheus import MetricsUnavailable, PrometheusClient, SchedulerMetrics
from scalable.controller.prometheus_policy import UrlNotAllowed, UrlPolicy, _blocked, guarded_session, parse_allowed_urls

SECRET = "AKIA-SECRET-ROLE-CREDENTIALS-42"


class Metadata:
    """Answers each path as configured; counts hits on the redirect target."""

    def __init__(self):
        self.hits: list[str] = []
        self.mode = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        mode = self.mode
        if request.path == "/latest/meta-data/iam":
            return web.Response(text=SECRET)
        if mode == "redirect":
            raise web.HTTPFound("/latest/meta-data/iam")
        if mode in (404, 500, 403):
            return web.Response(status=mode, text=f"{SECRET} " * 50)
        if mode == "not-json":
            return web.Response(text=SECRET)
        if mode == "error-field":
            return web.json_response({"status": "error", "errorType": SECRET, "error": SECRET})
        if mode == "scalar":
            return web.json_response({"status": "success", "data": {"resultType": "scalar", "result": [1, SECRET]}})
        if mode == "wrong-type":
            return web.json_response({"status": "success", "data": {"resultType": SECRET, "result": SECRET}})
        if mode == "exposition":
            return web.Response(text=f"# HELP x {SECRET}\n{SECRET} {SECRET}\n")
        raise AssertionError(mode)


@pytest_asyncio.fixture(loop_scope="function")
async def metadata():
    fake = Metadata()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    async with aiohttp.ClientSession() as session:
        yield fake, app, f"http://127.0.0.1:{runner.addresses[0][1]}", session
    await runner.cleanup()


@pytest.mark.parametrize("mode, reason", [
    (404, "HTTPClientError"), (403, "HTTPClientError"), (500, "HTTPServerError"), ("not-json", "BadResponse"),
    ("error-field", "QueryFailed"), ("scalar", "BadValue"), ("wrong-type", "BadResponse"), ("redirect", "HTTPRedirect"),
])
async def test_what_the_url_answered_never_reaches_the_message(metadata, mode, reason):
    fake, app, url, session = metadata
    fake.mode = mode
    with pytest.raises(MetricsUnavailable) as info:
        await PrometheusClient(url, session, timeout=2).query("up", "queued")
    assert info.value.reason == reason
    assert SECRET not in info.value.message and SECRET not in str(info.value)
    assert "/latest/meta-data/iam" not in fake.hits, "a redirect was followed"


async def test_series_queries_say_no_more(metadata):
    fake, app, url, session = metadata
    fake.mode = 404
    with pytest.raises(MetricsUnavailable) as info:
        await PrometheusClient(url, session, timeout=2).query_series("up", "workerMemory")
    assert info.value.reason == "HTTPClientError" and SECRET not in info.value.message


@pytest.mark.parametrize("mode", ["redirect", 404, "not-json", "exposition"])
async def test_the_scheduler_fallback_neither_follows_nor_repeats(metadata, mode):
    # the scheduler URL is the admin's template, but the Service behind it is the tenant's
    fake, app, url, session = metadata
    fake.mode = mode
    with pytest.raises(MetricsUnavailable) as info:
        await SchedulerMetrics(url, session, timeout=2).queue_metrics()
    assert info.value.reason == "SchedulerUnavailable"
    assert SECRET not in info.value.message
    assert "/latest/meta-data/iam" not in fake.hits


@pytest.mark.parametrize("url, why", [
    ("http://169.254.169.254/latest/meta-data/", "IP address"),
    ("http://metadata.google.internal/computeMetadata/v1/", "allow-list"),
    ("http://127.0.0.1:9090", "IP address"),
    ("http://[::1]:9090", "IP address"),
    ("http://admin:hunter2@prometheus.monitoring.svc:9090", "credentials"),
    ("http://prometheus.monitoring.svc@evil.example", "credentials"),
    ("http://prometheus.monitoring.svc.evil.example", "allow-list"),
    ("http://svc", "allow-list"),
    ("http://prometheus.monitoring.svc:9090/?x=1", "query string"),
    ("file:///etc/passwd", "http and https"),
    ("http://prometheus.monitoring.svc:99999", "parsed"),
])
def test_the_default_policy_allows_in_cluster_services_only(url, why):
    with pytest.raises(UrlNotAllowed, match=why):
        UrlPolicy().check(url)


@pytest.mark.parametrize("url", [
    "http://prometheus-server.monitoring.svc", "https://prometheus.monitoring.svc:9090/prefix",
    "http://prometheus-operated.monitoring.svc.cluster.local:9090", "http://Prometheus.Monitoring.SVC.",
])
def test_in_cluster_services_are_allowed_by_default(url):
    UrlPolicy().check(url)


def test_the_admins_list_decides_and_the_default_url_is_always_allowed():
    policy = UrlPolicy(parse_allowed_urls("https://prometheus.example.com, 127.0.0.1:9090"), "http://10.0.0.5:9090/")
    policy.check("https://prometheus.example.com/")
    policy.check("https://prometheus.example.com:8443")           # no port in the entry: any port
    policy.check("http://127.0.0.1:9090")
    policy.check("http://10.0.0.5:9090")                      # the operator's own --prometheus-url
    for refused in ("http://prometheus.example.com", "https://prometheus.example.org", "http://127.0.0.1:9091",
                    "http://prometheus.monitoring.svc", "http://10.0.0.5:9091"):
        with pytest.raises(UrlNotAllowed):
            policy.check(refused)
    with pytest.raises(UrlNotAllowed, match="none besides"):
        UrlPolicy(parse_allowed_urls("")).check("http://prometheus.monitoring.svc")


@pytest.mark.parametrize("entry", ["ftp://x", "http://a/b", "a@b", "*", "a.*.svc", "http://x:y"])
def test_bad_entries_are_refused_at_startup(entry):
    with pytest.raises(ValueError):
        parse_allowed_urls(entry)


async def test_a_pattern_matched_name_that_resolves_to_loopback_is_not_connected(metadata):
    # an ExternalName Service makes x.tenant.svc a CNAME for anything; here the system resolver
    # turns "localhost" into 127.0.0.1, and only a pattern would have let the name through
    fake, url, _ = metadata[0], metadata[2], metadata[3]
    port = url.rsplit(":", 1)[1]
    policy = UrlPolicy(("*.svc",))
    async with guarded_session(policy) as session:
        with pytest.raises(MetricsUnavailable) as info:
            await PrometheusClient(f"http://localhost:{port}", session, timeout=2).query("up", "queued")
        assert info.value.reason == "URLNotAllowed" and "loopback" in info.value.message
        with pytest.raises(MetricsUnavailable) as info:
            await SchedulerMetrics(f"http://localhost:{port}", session, timeout=2).queue_metrics()
        assert info.value.reason == "SchedulerUnavailable"
    assert fake.hits == [], "the guarded session connected to a loopback address"
    # a name the admin wrote out is trusted as written
    fake.mode = 404
    async with guarded_session(UrlPolicy(("localhost",))) as session:
        with pytest.raises(MetricsUnavailable) as info:
            await PrometheusClient(f"http://localhost:{port}", session, timeout=2).query("up", "queued")
    assert info.value.reason == "HTTPClientError" and fake.hits


@pytest.mark.parametrize("address, blocked", [
    ("169.254.169.254", True), ("127.0.0.1", True), ("::1", True), ("fe80::1%eth0", True), ("fd00:ec2::254", True),
    ("::ffff:169.254.169.254", True), ("100.100.100.200", True), ("0.0.0.0", True), ("10.96.0.10", False),
    ("fd12::1", False), ("192.168.1.5", False),
])
def test_which_resolved_addresses_are_refused(address, blocked):
    assert _blocked(address) is blocked
