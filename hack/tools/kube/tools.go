//go:build tools

// Package tools pins the upstream commands this wrapper module builds, so that
// `go mod tidy` keeps their dependencies in go.mod/go.sum. hack/testenv-build.sh runs
// `go build` of the control plane (kube-apiserver, kube-controller-manager, kube-scheduler)
// and the node (kubelet, kube-proxy) inside this module.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
