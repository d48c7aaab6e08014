"""The HTTP client of the operator's telemetry ingestion endpoint: one request, classified.

``POST {url}/v1/namespaces/{namespace}/scalableworkflows/{name}/runs`` with the body the
endpoint describes at ``/openapi.json`` (see scalable.controller.ingest), the token as
``Authorization: Bearer``. urllib3 (the HTTP library requests and the Kubernetes client are
built on) with certificate verification on; ``ca_file`` names the CA bundle that signed the
operator's certificate when it is not a public one.

A token is a credential: it is never sent over plain http to a host other than loopback,
unless the caller says so (``allow_insecure_http``, for a mesh that encrypts for it).

What an answer means, for a caller that retries (:mod:`scalable.telemetry.spool`):

- 200: stored; ``accepted`` new records, ``duplicates`` the operator had already.
- :class:`Unavailable` (retry later, nothing lost): no connection, a timeout, 5xx, 408, 429
  (with the ``Retry-After`` it sent).
- :class:`Refused` (retrying the same request cannot help): any other 4xx, with the
  operator's reason and, for invalid records, which record and which field.
  ``batch_only`` tells a refusal of this batch (400, 409, 413, 422: other batches may go) from
  one of every request to this endpoint (401, 403, 404, ...: fix the token, RBAC or URL).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3

from scalable.telemetry.credentials import TokenError, TokenSource

__all__ = ["IngestClient", "PushResult", "PushError", "Refused", "Unavailable", "InsecureTransport", "is_loopback"]

_TRANSIENT_4XX = frozenset({408, 429})
_BATCH_ONLY = frozenset({400, 409, 413, 422})


class PushError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(PushError):
    """The operator cannot take the batch now; the same request may succeed later."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class Refused(PushError):
    """The operator refused the request as sent (a 4xx other than 408/429)."""

    @property
    def batch_only(self) -> bool:
        return self.status in _BATCH_ONLY


class InsecureTransport(ValueError):
    """A token would travel in clear text to a host that is not this machine."""


@dataclass(frozen=True)
class PushResult:
    run_id: str
    accepted: int
    duplicates: int = 0


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (the name, not whatever DNS answers for other names)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the backoff's own wait applies
    return seconds if seconds >= 0 else None


def _reason(status: int, data: bytes) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        text = data[:200].decode("utf-8", "replace").strip()
        return text or f"HTTP {status}"
    if not isinstance(body, dict):
        return f"HTTP {status}"
    message = str(body.get("error") or f"HTTP {status}")
    refused = body.get("refused")
    if isinstance(refused, list) and refused:
        parts = [f"record {r.get('index')}: {r.get('reason')}" for r in refused[:5] if isinstance(r, dict)]
        more = f"; and {len(refused) - 5} more" if len(refused) > 5 else ""
        message = f"{message}: {'; '.join(parts)}{more}"
    return message


class IngestClient:
    """Pushes batches of one workflow's telemetry to the operator, one request per call."""

    def __init__(
        self,
        url: str,
        namespace: str,
        name: str,
        *,
        token: TokenSource | str | None = None,
        ca_file: str | None = None,
        allow_insecure_http: bool = False,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"telemetry URL {url!r}: expected http(s)://host[:port][/prefix]")
        if parts.query or parts.fragment:
            raise ValueError(f"telemetry URL {url!r}: no query or fragment, the path is added by the client")
        if not namespace or not name:
            raise ValueError("the workflow is NAMESPACE/NAME, both non-empty")
        self.token = token if isinstance(token, TokenSource) else TokenSource(token=token) if token else TokenSource()
        if parts.scheme == "http" and self.token.present and not is_loopback(parts.hostname) and not allow_insecure_http:
            raise InsecureTransport(
                f"refusing to send {self.token.origin} over plain http to {parts.hostname}: use https "
                "(the chart's ingest.tls), or allow it explicitly (--allow-insecure-http, "
                "SCALABLE_TELEMETRY_ALLOW_INSECURE_HTTP=1) where something else encrypts the traffic"
            )
        if ca_file is not None and parts.scheme != "https":
            raise ValueError(f"a CA file applies to https, not to {url!r}")
        base = url.rstrip("/")
        self.url = base
        self.namespace, self.name = namespace, name
        self.endpoint = f"{base}/v1/namespaces/{quote(namespace, safe='')}/scalableworkflows/{quote(name, safe='')}/runs"
        kwargs: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
        if ca_file is not None:
            kwargs["ca_certs"] = str(ca_file)
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=2, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=timeout_s), **kwargs,
        )

    def __repr__(self) -> str:
        return f"IngestClient({self.endpoint!r})"

    def close(self) -> None:
        self._pool.clear()

    def push(self, body: dict[str, Any] | bytes) -> PushResult:
        """Send one batch; return what the operator stored or raise Unavailable / Refused."""
        data = body if isinstance(body, bytes) else json.dumps(body, allow_nan=False).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            token = self.token.get()
        except TokenError as exc:
            raise Refused(str(exc)) from None
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = self._pool.request("POST", self.endpoint, body=data, headers=headers, preload_content=True)
        except urllib3.exceptions.SSLError as exc:
            # a certificate the CA does not vouch for will not verify on a retry either
            raise Refused(f"TLS with {self.url} failed: {exc}; give the operator's CA (--ca-file, "
                          "SCALABLE_TELEMETRY_CA_FILE)") from None
        except (urllib3.exceptions.HTTPError, OSError, socket.timeout) as exc:
            raise Unavailable(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
        status = response.status
        if status == 200:
            try:
                answer = json.loads(response.data)
                return PushResult(str(answer["run_id"]), int(answer["accepted"]), int(answer.get("duplicates") or 0))
            except (ValueError, KeyError, TypeError):
                raise Unavailable(f"{self.url} answered 200 with a body that is not the ingestion answer "
                                  f"({response.data[:100]!r})", status) from None
        reason = _reason(status, response.data)
        if status >= 500 or status in _TRANSIENT_4XX:
            raise Unavailable(f"{self.url} answered {status}: {reason}", status, _retry_after(response.headers.get("Retry-After")))
        raise Refused(f"{self.url} refused the batch ({status}): {reason}", status)
