// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 at the version
// pinned in hack/versions.env (its own go.mod has relative replaces, so it cannot be
// `go install`ed directly).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
