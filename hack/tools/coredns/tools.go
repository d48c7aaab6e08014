//go:build tools

// Package tools pins CoreDNS's command (the module's root package, with the plugins of its
// own plugin.cfg, kubernetes among them) so that `go mod tidy` keeps its dependencies;
// hack/testenv-build.sh runs `go build github.com/coredns/coredns` inside this module.
package tools

import _ "github.com/coredns/coredns"
