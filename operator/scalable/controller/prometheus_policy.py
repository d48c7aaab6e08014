"""Which Prometheus URLs a ScalableWorkflow may name: the operator's admin decides.

``spec.scaling.prometheus.url`` is the tenant's to write, and the operator fetches it from
inside the cluster: without a policy a tenant could make it fetch a cloud metadata endpoint,
the API server or any internal service. The admin's allow-list (chart value
``prometheusPolicy.allowedUrls``, ``--prometheus-allowed-urls``) names what may be queried;
the default is in-cluster Services only (hosts ending in ``.svc`` or ``.svc.cluster.local``).
The operator's own ``--prometheus-url`` is the admin's choice and always allowed.

An entry is ``[scheme://]host[:port]``: no scheme means http or https, no port means any port,
and a host ``*.example`` means any name that ends in ``.example``. IP addresses are matched as
written (``127.0.0.1``, ``[::1]``). Independently of the list, a URL with credentials in it
(``user:pass@``), a query string or a fragment is refused, and only http and https are spoken.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DEFAULT_ALLOWED_URLS", "UrlNotAllowed", "UrlPolicy", "parse_allowed_urls"]

#: in-cluster Services: the chart's default too
DEFAULT_ALLOWED_URLS = ("*.svc", "*.svc.cluster.local")
SCHEMES = ("http", "https")


class UrlNotAllowed(ValueError):
    """The URL is outside the policy; the text names the rule, never what the URL would answer."""


@dataclass(frozen=True)
class _Entry:
    schemes: tuple[str, ...]
    host: str
    port: int | None

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if scheme not in self.schemes or (self.port is not None and port != self.port):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


def _entry(text: str) -> _Entry:
    raw = text.strip()
    if not raw:
        raise ValueError("an empty entry")
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        schemes = (scheme.lower(),)
        if schemes[0] not in SCHEMES:
            raise ValueError(f"{text!r}: only http and https")
    else:
        schemes, rest = SCHEMES, raw
    if any(ch in rest for ch in "/?#@"):
        raise ValueError(f"{text!r}: an entry is [scheme://]host[:port], without path, credentials or query")
    parts = urlsplit(f"x://{rest}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from exc
    if not host or ("*" in host and not (host.startswith("*.") and "*" not in host[2:])):
        raise ValueError(f"{text!r}: a host, or *.suffix")
    return _Entry(schemes, host.lower(), port)


def parse_allowed_urls(text: str | Iterable[str]) -> tuple[str, ...]:
    """The entries of a comma-separated list (or an iterable), each checked; "" is none."""
    items = text.split(",") if isinstance(text, str) else list(text)
    entries = tuple(item.strip() for item in items if item.strip())
    for item in entries:
        _entry(item)
    return entries


class UrlPolicy:
    """The admin's allow-list, and the operator's default URL that is always allowed."""

    def __init__(self, allowed: Iterable[str] = DEFAULT_ALLOWED_URLS, default_url: str | None = None) -> None:
        self.allowed = tuple(allowed)
        self.entries = tuple(_entry(item) for item in self.allowed)
        self.default_url = default_url.rstrip("/") if default_url else None

    def check(self, url: str) -> None:
        """Raise :class:`UrlNotAllowed` unless a workflow may query ``url``."""
        if self.default_url is not None and url.rstrip("/") == self.default_url:
            return
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UrlNotAllowed("the URL cannot be parsed") from exc
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise UrlNotAllowed("only http and https URLs are queried")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise UrlNotAllowed("credentials in the URL (user:password@) are refused; the operator sends none")
        if parts.query or parts.fragment or "?" in url or "#" in url:
            raise UrlNotAllowed("a query string or fragment in the base URL is refused")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise UrlNotAllowed("the URL has no host")
        if port is None:
            port = 443 if scheme == "https" else 80
        if _is_ip(host) and not any(not e.host.startswith("*.") and e.host == host for e in self.entries):
            # an address is allowed only when listed as written, never by a name pattern
            raise UrlNotAllowed("this IP address is not in the operator's allow-list (prometheusPolicy.allowedUrls)")
        if not any(entry.matches(scheme, host, port) for entry in self.entries):
            allowed = ", ".join(self.allowed) or "none besides the operator's default"
            raise UrlNotAllowed(f"the host is not in the operator's allow-list (prometheusPolicy.allowedUrls: {allowed})")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
