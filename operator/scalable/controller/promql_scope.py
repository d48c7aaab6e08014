"""A workflow's PromQL reads its own cluster's series and nothing else.

Queries are the tenant's to write (``spec.scaling.prometheus.queries``) and run on the
operator's Prometheus, which usually scrapes every namespace. The numbers they return land
in the workflow's status (``lastDecision.queued``...), so an unchecked query would read other
namespaces' series. Before a query is sent it is parsed with a real PromQL parser
(``promql-parser``, the Rust parser's bindings) and every vector selector, including those in
range selectors and subqueries, must carry the equality matchers
``namespace="<the workflow's namespace>"`` and ``dask_org_cluster_name="<its clusterRef>"``
(:mod:`scalable.controller.scrape_labels`). Anything the check cannot vouch for is refused
rather than guessed at: text the parser does not take, ``or`` inside braces, functions that
read series the query does not name (``info``), comments and raw strings (two parsers could
disagree about where they end), and non-ASCII text.

The query sent is the text that was checked, never a re-serialisation of the parsed tree.
"""

from __future__ import annotations

import functools

import promql_parser

from scalable.controller.scrape_labels import CLUSTER_LABEL, NAMESPACE_LABEL

__all__ = ["QueryNotAllowed", "check_scoped"]

#: functions that join in series their arguments do not select
IMPLICIT_READS = frozenset({"info"})
#: characters where the operator's parser and Prometheus' could disagree about the structure
UNCHECKABLE = {"#": "a comment", "`": "a raw string"}
_NODES = (
    promql_parser.AggregateExpr, promql_parser.BinaryExpr, promql_parser.Call, promql_parser.MatrixSelector,
    promql_parser.NumberLiteral, promql_parser.ParenExpr, promql_parser.StringLiteral, promql_parser.SubqueryExpr,
    promql_parser.UnaryExpr, promql_parser.VectorSelector,
)


class QueryNotAllowed(ValueError):
    """The query could read series outside the workflow's cluster; the text says why (it
    names only labels and the query's own parts, nothing Prometheus answered)."""


def check_scoped(promql: str, namespace: str, cluster: str) -> None:
    """Raise :class:`QueryNotAllowed` unless every selector of ``promql`` is scoped to
    ``namespace`` and ``cluster``."""
    problem = _problem(promql, namespace, cluster)
    if problem is not None:
        raise QueryNotAllowed(problem)


@functools.lru_cache(maxsize=4096)
def _problem(promql: str, namespace: str, cluster: str) -> str | None:
    # the same few queries are checked on every poll of every workflow: the verdict is cached
    if not promql.isascii() or any(not ch.isprintable() and ch not in "\n\t " for ch in promql):
        return "the query has non-ASCII or control characters"
    for char, what in UNCHECKABLE.items():
        if char in promql:
            return f"the query contains {what} ({char!r}), which this check does not accept"
    try:
        expr = promql_parser.parse(promql)
    except (ValueError, RuntimeError) as exc:
        return f"the query is not PromQL the operator can check ({str(exc)[:160]})"
    want = {NAMESPACE_LABEL: namespace, CLUSTER_LABEL: cluster}
    problems: list[str] = []

    def visit(node: object) -> bool | None:
        if not isinstance(node, _NODES):
            problems.append(f"the query has a {type(node).__name__}, which this check does not know")
        elif isinstance(node, promql_parser.Call) and node.func.name in IMPLICIT_READS:
            problems.append(f"{node.func.name}() reads series the query does not select")
        elif isinstance(node, promql_parser.MatrixSelector):
            _check_selector(node.vector_selector, want, problems)
        elif isinstance(node, promql_parser.VectorSelector):
            _check_selector(node, want, problems)
        return False if problems else None

    promql_parser.walk(expr, pre_visit=visit)
    return problems[0] if problems else None


def _check_selector(selector: promql_parser.VectorSelector, want: dict[str, str], problems: list[str]) -> None:
    name = selector.name or "{...}"
    if selector.matchers.or_matchers:
        problems.append(f"selector {name} uses 'or' between matchers, which this check does not accept")
        return
    equal = {(m.name, m.value) for m in selector.matchers.matchers if m.op == promql_parser.MatchOp.Equal}
    missing = [f'{label}="{value}"' for label, value in want.items() if (label, value) not in equal]
    if missing:
        problems.append(f"selector {name} lacks {', '.join(missing)}: a workflow's queries may read only its own "
                        f"cluster's series (use ${'namespace'} and ${'cluster'} in the template)")
