// Command gateway is envgate: a transparent gRPC proxy that routes every call
// by its `env` header to app-service in that environment's namespace.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/envgate/envgate/gateway/internal/gctune"
	"github.com/envgate/envgate/gateway/internal/procs"
)

// heapFloor is the least heap goal: with a live heap of 1-2 MB and Go's 4 MB
// minimum goal, the collector would run every few hundred calls and take a
// fifth of the gateway's CPU at 100-byte calls (make bench). GOGC in the
// environment turns the tuning off.
const heapFloor = 12 << 20

func main() {
	if os.Getenv("GOGC") == "" {
		defer gctune.Start(heapFloor)()
	}
	// GOMEMLIMIT from the container's limit (the manifests' 256 MiB), so
	// the collector, not the OOM killer, answers a heap that nears it.
	if os.Getenv("GOMEMLIMIT") == "" {
		gctune.SetMemoryLimit()
	}
	// As many Ps as the load needs, up to Go's default (procs): one P
	// serves a load under a core for a fifth less CPU than two. GOMAXPROCS
	// in the environment fixes the number instead.
	if os.Getenv("GOMAXPROCS") == "" {
		stop, err := procs.Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, "gateway:", err)
		}
		defer stop()
	}
	// Nothing serves allocation profiles: sampling them costs memory for
	// nothing.
	runtime.MemProfileRate = 0
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel() // the first signal drains
		<-sigs
		fmt.Fprintln(os.Stderr, "gateway: second signal, exiting now")
		os.Exit(1)
	}()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}
