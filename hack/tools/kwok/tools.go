//go:build tools

// Package tools pins kwok's command so that `go mod tidy` keeps its dependencies;
// hack/testenv-build.sh runs `go build sigs.k8s.io/kwok/cmd/kwok` inside this module.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
