# dask-kubernetes' controller, as its own Helm chart runs it (the chart in the
# dask-kubernetes wheel, dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator):
# the container gets only args (--liveness=http://0.0.0.0:8080/healthz, then the kopfArgs,
# --all-namespaces by default) and runs as uid 1000 on a read-only root filesystem. So the
# entry point is upstream's, `kopf run -m dask_kubernetes.operator.controller`, and CMD is
# upstream's default args.
# FROM the dask image: dask-kubernetes, kopf and their dependencies are already installed
# there at the host's versions (the operator image's pip constraints).
ARG DASK_IMAGE
FROM ${DASK_IMAGE}
USER 0:0
# kopf names itself user@host (getpass.getuser), which needs uid 1000 in /etc/passwd.
RUN groupadd --gid 1000 dask \
 && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin dask
ENV HOME=/tmp
USER 1000:1000
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["kopf", "run", "-m", "dask_kubernetes.operator.controller"]
CMD ["--liveness=http://0.0.0.0:8080/healthz", "--verbose", "--all-namespaces"]
