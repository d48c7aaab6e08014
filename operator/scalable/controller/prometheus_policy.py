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

A name is checked once more when it is resolved (:func:`guarded_session`): a tenant can make
``x.their-namespace.svc`` point anywhere with an ExternalName Service, so a name the list
matches only by a ``*.`` pattern must not resolve to a loopback, link-local (cloud metadata),
unspecified or multicast address. Names and addresses the admin wrote out are trusted.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

__all__ = ["AddressNotAllowed", "DEFAULT_ALLOWED_URLS", "GuardedResolver", "UrlNotAllowed", "UrlPolicy",
           "guarded_session", "parse_allowed_urls"]

#: in-cluster Services: the chart's default too
DEFAULT_ALLOWED_URLS = ("*.svc", "*.svc.cluster.local")
SCHEMES = ("http", "https")


#: where a name matched by a pattern must not lead: loopback, link-local (169.254.169.254 and
#: fd00:ec2::254 are metadata endpoints), Alibaba's metadata address, unspecified, multicast
BLOCKED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "100.100.100.200/32", "224.0.0.0/4",
    "::/128", "::1/128", "fe80::/10", "fd00:ec2::254/128", "ff00::/8",
))


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

    def named_explicitly(self, host: str) -> bool:
        """Whether the admin wrote ``host`` out (an entry without ``*.``, or the default URL's)."""
        host = host.lower().rstrip(".")
        default = (urlsplit(self.default_url).hostname or "").lower() if self.default_url else ""
        return host == default or any(not e.host.startswith("*.") and e.host == host for e in self.entries)

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


class AddressNotAllowed(OSError):
    """A name resolved only to addresses the operator does not connect to."""


def _blocked(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in BLOCKED_NETWORKS if network.version == ip.version)


class GuardedResolver(AbstractResolver):
    """The system's resolver, without the addresses a pattern-matched name must not reach."""

    def __init__(self, policy: UrlPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if self.policy.named_explicitly(host):
            return results
        kept = [r for r in results if not _blocked(r["host"])]
        if not kept:
            raise AddressNotAllowed("the name resolves only to loopback, link-local or other addresses the operator does not query")
        return kept

    async def close(self) -> None:
        await self.inner.close()


def guarded_session(policy: UrlPolicy, **kwargs: Any) -> aiohttp.ClientSession:
    """The HTTP session for Prometheus and scheduler fetches: names resolved through
    :class:`GuardedResolver`, and no cookies kept between tenants."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy))
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), **kwargs)
