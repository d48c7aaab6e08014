// Command pause is the pod sandbox process of the test node (hack/images-build.sh packs it
// as localhost/scalable/pause). It holds the pod's namespaces open by doing nothing: it
// blocks until SIGINT or SIGTERM and then exits 0. As PID 1 of a pod that shares its PID
// namespace it also reaps orphaned children, waiting for every exited child on SIGCHLD so
// that no zombie stays behind.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is set with -ldflags "-X main.version=..." by the build; printed by -v.
var version = "dev"

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-v", "--version", "version":
			fmt.Println("scalable pause", version)
			return
		default:
			fmt.Fprintf(os.Stderr, "usage: %s [-v]\n", os.Args[0])
			os.Exit(2)
		}
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not running as PID 1")
	}

	// Buffered: signals that arrive while a batch of children is being reaped are kept.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		switch sig {
		case syscall.SIGCHLD:
			reap()
		default:
			os.Exit(0)
		}
	}
}

// reap collects every child that has exited; SIGCHLD is not queued per child, so one
// signal may stand for several exits.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil { // 0: children left but none exited; ECHILD: none left
			return
		}
	}
}
