package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/proto/echopb"
)

// Issue 15, point 5: past limits.maxConcurrentCalls a call is refused at
// once with RESOURCE_EXHAUSTED and a message naming the limit, an HTTP
// request with 503, both logged with Envoy's overload flag OM; the bound
// counts both fronts, and places come back when calls end.
func TestMaxConcurrentCallsRefusesAtOnce(t *testing.T) {
	b := startBackend(t, "env1")
	cfg := testConfig(t, map[string][]string{"env1": {b.addr}})
	cfg.Limits.MaxConcurrentCalls = 2
	on := true
	cfg.AccessLog = &on
	logs := &lockedBuffer{}
	gw := startGateway(t, cfg, logs)
	c := echoClient(t, gw.Addrs()[0])
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "env", "env1")

	// Two calls the backend holds take both places.
	held, release := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { _, _ = c.Call(held, &echopb.EchoRequest{SleepMs: 60_000}) })
	}
	waitUntil(t, "two calls in flight", func() bool { return gw.calls.InFlight() == 2 })

	_, err := c.Call(ctx, &echopb.EchoRequest{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "limits.maxConcurrentCalls") {
		t.Fatalf("third call: %v, want RESOURCE_EXHAUSTED naming limits.maxConcurrentCalls", err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+gw.Addrs()[0]+"/", nil)
	req.Header.Set("env", "env1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "limits.maxConcurrentCalls") {
		t.Fatalf("HTTP request: %d %q, want 503 naming limits.maxConcurrentCalls", resp.StatusCode, body)
	}
	waitUntil(t, "the refusals logged with flag OM", func() bool {
		return strings.Count(logs.String(), `"response_flags":"OM"`) == 2
	})

	release()
	wg.Wait()
	waitUntil(t, "the places given back", func() bool { return gw.calls.InFlight() == 0 })
	if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
		t.Fatalf("a call once the held ones ended: %v", err)
	}
}
