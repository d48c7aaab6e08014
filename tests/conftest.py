"""Root conftest: makes `tests.support` importable and registers its pytest fixtures
(control plane, namespaces, ServiceAccount kubeconfigs, Prometheus, Dask processes).
See tests/support/fixtures.py for the fixture list."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

pytest_plugins = ["tests.support.fixtures"]
