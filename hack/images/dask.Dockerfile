# The Dask scheduler and worker image of the test node (hack/images-build.sh):
# the operator image (so the scheduler can load our SchedulerPlugin,
# scalable.telemetry.dask_plugin, and serve /metrics with prometheus_client) without its
# `scalable` entry point, because dask-kubernetes gives its pods full commands as args:
# [dask, scheduler, --host, 0.0.0.0] and [dask, worker, ...].
# Non-root (65532), HOME=/tmp: runs on a read-only root filesystem with /tmp writable.
ARG OPERATOR_IMAGE
FROM ${OPERATOR_IMAGE}
ENV HOME=/tmp \
    TMPDIR=/tmp \
    DASK_TEMPORARY_DIRECTORY=/tmp
USER 65532:65532
WORKDIR /tmp
# The scheduler, dashboard (and /metrics) and worker ports dask-kubernetes uses.
EXPOSE 8786 8787 8788
ENTRYPOINT []
CMD ["dask", "scheduler", "--host", "0.0.0.0"]
