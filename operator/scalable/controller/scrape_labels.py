"""The labels a cluster's Prometheus attaches to a Dask cluster's series, named once.

Dask's exporters label their series with nothing but ``state`` and the like: which namespace
and which DaskCluster a series belongs to is added by the scrape. Both usual ways of
scraping dask-kubernetes' pods give the same names:

* the prometheus-community chart's ``kubernetes-pods`` job (kubernetes_sd, role pod) copies
  ``__meta_kubernetes_namespace`` to ``namespace`` and maps every pod label with ``labelmap``,
  so the pod label ``dask.org/cluster-name`` becomes ``dask_org_cluster_name``;
* dask-kubernetes' own chart ships a ServiceMonitor (scheduler) and a PodMonitor (workers)
  with ``targetLabels: [dask.org/cluster-name]``, which prometheus-operator sanitises to the
  same ``dask_org_cluster_name``, next to its ``namespace`` label.

The default queries (:mod:`scalable.controller.resources`) select with these matchers, and
the query check (:mod:`scalable.controller.promql_scope`) demands them on every selector of
any query, so the defaults and the tenancy rule cannot drift apart.
"""

from __future__ import annotations

__all__ = ["CLUSTER_LABEL", "NAMESPACE_LABEL", "SCOPE_MATCHERS", "scope_labels"]

#: the namespace of the scraped pod (kubernetes_sd relabelling, prometheus-operator)
NAMESPACE_LABEL = "namespace"
#: the pod label ``dask.org/cluster-name``, as labelmap and prometheus-operator spell it
CLUSTER_LABEL = "dask_org_cluster_name"

#: the matchers every selector of a workflow's PromQL carries (``$namespace``/``$cluster`` templated)
SCOPE_MATCHERS = f'{NAMESPACE_LABEL}="$namespace",{CLUSTER_LABEL}="$cluster"'


def scope_labels(namespace: str, cluster: str) -> dict[str, str]:
    """The label set a series of ``cluster`` in ``namespace`` carries after the scrape."""
    return {NAMESPACE_LABEL: namespace, CLUSTER_LABEL: cluster}
