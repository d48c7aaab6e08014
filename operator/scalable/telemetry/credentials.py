"""Where the token a telemetry client sends comes from.

In a pod, the ServiceAccount token Kubernetes mounts at
``/var/run/secrets/kubernetes.io/serviceaccount/token``; outside, a token given explicitly (an
option, ``$SCALABLE_TELEMETRY_TOKEN``) or a file holding one (``--token-file``,
``$SCALABLE_TELEMETRY_TOKEN_FILE``, e.g. written by ``kubectl create token``). A file is read
again on every request: kubelet rotates projected tokens in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["TokenSource", "SA_TOKEN_PATH", "SA_NAMESPACE_PATH", "in_cluster_namespace", "TokenError"]

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SA_TOKEN_PATH = SA_DIR / "token"
SA_NAMESPACE_PATH = SA_DIR / "namespace"
TOKEN_ENV = "SCALABLE_TELEMETRY_TOKEN"
TOKEN_FILE_ENV = "SCALABLE_TELEMETRY_TOKEN_FILE"
_MAX_TOKEN_BYTES = 64 * 1024


class TokenError(ValueError):
    """A token file that cannot be read, is empty or is not a token."""


class TokenSource:
    """A bearer token: fixed, or read from a file each time it is needed; or none at all."""

    def __init__(self, token: str | None = None, path: str | os.PathLike[str] | None = None, origin: str = "") -> None:
        if token is not None and path is not None:
            raise ValueError("give a token or a token file, not both")
        self._token = token.strip() if token is not None else None
        self.path = Path(path) if path is not None else None
        self.origin = origin or (f"token file {self.path}" if self.path else "the given token" if token else "no token")

    @classmethod
    def resolve(cls, token: str | None = None, token_file: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None, sa_token_path: str | os.PathLike[str] = SA_TOKEN_PATH) -> "TokenSource":
        """The first of: ``token``, ``token_file``, $SCALABLE_TELEMETRY_TOKEN,
        $SCALABLE_TELEMETRY_TOKEN_FILE, the pod's ServiceAccount token; else no token."""
        env = os.environ if env is None else env
        if token:
            return cls(token=token, origin="the given token")
        if token_file:
            return cls(path=token_file)
        if env.get(TOKEN_ENV):
            return cls(token=env[TOKEN_ENV], origin=f"${TOKEN_ENV}")
        if env.get(TOKEN_FILE_ENV):
            return cls(path=env[TOKEN_FILE_ENV], origin=f"${TOKEN_FILE_ENV} ({env[TOKEN_FILE_ENV]})")
        if Path(sa_token_path).is_file():
            return cls(path=sa_token_path, origin=f"the pod's ServiceAccount token ({sa_token_path})")
        return cls()

    @property
    def present(self) -> bool:
        return self._token is not None or self.path is not None

    def get(self) -> str | None:
        """The token now (a file is read again), or None when there is none."""
        if self._token is not None:
            return self._token or None
        if self.path is None:
            return None
        try:
            with open(self.path, "rb") as f:
                data = f.read(_MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            raise TokenError(f"cannot read {self.origin}: {exc.strerror or exc}") from None
        if len(data) > _MAX_TOKEN_BYTES:
            raise TokenError(f"{self.origin} is larger than {_MAX_TOKEN_BYTES} bytes: not a token")
        try:
            token = data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise TokenError(f"{self.origin} is not ASCII: not a token") from None
        if not token or any(c.isspace() for c in token):
            raise TokenError(f"{self.origin} is empty or holds more than one word")
        return token


def in_cluster_namespace(path: str | os.PathLike[str] = SA_NAMESPACE_PATH) -> str | None:
    """The namespace of the pod this runs in, from its mounted ServiceAccount; None outside."""
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None
