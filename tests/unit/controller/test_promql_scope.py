"""A workflow's PromQL must select only its own cluster's series (issue 15, point 1): every
selector carries namespace="<ns>" and dask_org_cluster_name="<cluster>", checked on the parse
tree, and what the check cannot vouch for is refused. The same labels make the defaults."""

import pytest

from scalable.controller.prometheus import MetricsUnavailable, scoped_query
from scalable.controller.promql_scope import QueryNotAllowed, check_scoped
from scalable.controller.resources import PrometheusQueries
from scalable.controller.scrape_labels import CLUSTER_LABEL, NAMESPACE_LABEL

S = 'namespace="team-a",dask_org_cluster_name="sim"'

ALLOWED = [
    f"sum(dask_scheduler_tasks{{state=~\"queued|waiting\",{S}}})",
    f"sum by (instance) (rate(dask_worker_memory_bytes{{{S}}}[5m]))",
    f"max_over_time(sum(dask_scheduler_workers{{{S}}})[5m:30s]) + on() group_left vector(0)",
    f"-(dask_scheduler_workers{{{S}}} offset 1m) or absent(dask_scheduler_workers{{{S}}})",
    f'dask_scheduler_tasks{{{S},namespace=~".*"}}',   # more matchers only narrow
    "vector(3)",
]

REFUSED = [
    ("sum(dask_scheduler_tasks)", "lacks"),
    (f"sum(dask_scheduler_tasks{{{S}}}) + sum(dask_scheduler_tasks)", "lacks"),
    (f"sum(x{{{S}}}) + max_over_time(y[5m:])", "lacks"),
    ('x{namespace="team-b",dask_org_cluster_name="sim"}', 'namespace="team-a"'),
    ('x{namespace=~"team-a|team-b",dask_org_cluster_name="sim"}', 'namespace="team-a"'),
    ('x{namespace="team-a",dask_org_cluster_name!="sim"}', "dask_org_cluster_name"),
    ('x{namespace="team-a" or dask_org_cluster_name="sim"}', "or"),
    (f"info(x{{{S}}})", "info"),
    (f"x{{{S}}} # }} + sum(y)", "comment"),
    ("x{a=`b`," + S + "}", "raw string"),
    (f"x{{{S}}} + ünïcode", "non-ASCII"),
    ("sum(x{", "not PromQL"),
]


@pytest.mark.parametrize("promql", ALLOWED)
def test_scoped_queries_pass(promql):
    check_scoped(promql, "team-a", "sim")


@pytest.mark.parametrize("promql, why", REFUSED)
def test_queries_that_could_read_other_series_are_refused(promql, why):
    with pytest.raises(QueryNotAllowed, match=why.replace("(", r"\(")):
        check_scoped(promql, "team-a", "sim")


def test_the_defaults_pass_the_check_they_are_built_from():
    for name in PrometheusQueries.model_fields:
        promql = scoped_query(PrometheusQueries(), name, "sim", "team-a")
        assert f'{NAMESPACE_LABEL}="team-a"' in promql and f'{CLUSTER_LABEL}="sim"' in promql


def test_a_refused_query_is_a_fixed_reason_naming_the_query():
    with pytest.raises(MetricsUnavailable) as info:
        scoped_query({"queued": "sum(dask_scheduler_tasks)"}, "queued", "sim", "team-a")
    assert info.value.reason == "QueryNotAllowed" and info.value.message.startswith("queued: ")
