//go:build tools

// Package tools pins helm's command so that `go mod tidy` keeps its dependencies;
// hack/testenv-build.sh runs `go build helm.sh/helm/v3/cmd/helm` inside this module.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
