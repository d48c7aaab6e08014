"""Test support: the local control plane, Prometheus and Dask processes, and their fixtures."""
