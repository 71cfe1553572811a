// Command gateway is envgate: a transparent gRPC proxy that routes every call
// by its `env` header to app-service in that environment's namespace.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// defaultGCPercent trades memory for CPU: a proxy's live heap is small and
// its garbage is per call, so collecting half as often saves about a tenth of
// its CPU (make bench) for a few MB of heap. GOGC in the environment wins.
const defaultGCPercent = 200

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
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
