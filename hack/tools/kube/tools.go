//go:build tools

// Package tools pins the upstream commands this wrapper module builds, so that
// `go mod tidy` keeps their dependencies in go.mod/go.sum. hack/testenv-build.sh runs
// `go build k8s.io/kubernetes/cmd/kube-apiserver .../kube-controller-manager .../kube-scheduler`
// inside this module.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
