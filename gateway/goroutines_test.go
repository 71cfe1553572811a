package main

import (
	"runtime/metrics"
	"testing"

	"github.com/envgate/envgate/proto/echopb"
)

// The gateway starts no goroutine for a unary call whose request is all
// in when its handler runs (the usual case): the proxy sends the request
// before it reads the answer rather than on a goroutine beside it, and the
// call's context is rooted in a cancelCtx, so the upstream call's context
// registers with it instead of having a goroutine watch it. A goroutine
// each was 3% of the gateway's CPU at 100 B, and the watcher 2% more.
//
// Goroutines created per call through the gateway are counted less those
// per call made straight to the backend (its gRPC server's and the
// client's), in the same process. gRPC's own server (sharedHTTP2: false)
// starts a goroutine per stream: the default listener only.
func TestUnaryCallsStartNoGoroutines(t *testing.T) {
	cfg := testConfig(t, map[string][]string{"env1": {startBackend(t, "env1").addr}})
	if !cfg.Listeners[0].Shared() {
		t.Skip("gRPC's own server starts a goroutine per stream")
	}
	be := startBackend(t, "env1")
	cfg = testConfig(t, map[string][]string{"env1": {be.addr}})
	gw := startGateway(t, cfg, nil)
	perCall := func(addr string) float64 {
		c := echoClient(t, addr)
		ctx := withEnv(t.Context(), "env1")
		req := &echopb.EchoRequest{Payload: make([]byte, 100), ResponseSize: 100}
		call := func() {
			if _, err := c.Call(ctx, req); err != nil {
				t.Fatal(err)
			}
		}
		for range 20 { // connections, workers
			call()
		}
		s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
		metrics.Read(s)
		before := s[0].Value.Uint64()
		const calls = 500
		for range calls {
			call()
		}
		metrics.Read(s)
		return float64(s[0].Value.Uint64()-before) / calls
	}
	direct := perCall(be.addr)
	through := perCall(gw.Addrs()[0])
	t.Logf("goroutines created per call: %.3f direct, %.3f through the gateway", direct, through)
	if extra := through - direct; extra > 0.1 {
		t.Fatalf("the gateway created %.2f goroutines per unary call, want none", extra)
	}
}
