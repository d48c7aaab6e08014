//go:build tools

// Package tools pins Prometheus's command so that `go mod tidy` keeps its dependencies;
// hack/testenv-build.sh runs `go build -tags remove_all_sd,enable_kubernetes_sd
// github.com/prometheus/prometheus/cmd/prometheus` inside this module. Debian's prometheus
// package is built without Kubernetes service discovery, which is how clusters find Dask
// schedulers and workers; this build has it (and no other discovery plugin).
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
