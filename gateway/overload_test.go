package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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

// A client connection holds at most 100 calls in the gateway by default
// (SETTINGS_MAX_CONCURRENT_STREAMS, as Envoy's edge proxy best practices
// set it; HAProxy's default), on either of its HTTP/2 servers; a stream
// opened past it is reset with REFUSED_STREAM, which tells the client that
// nothing of it was processed (RFC 9113 section 8.7), and nothing of it
// reaches the upstream. So
// under overload the calls past the limit wait in the client, first come
// first served, instead of all sharing the gateway's CPU and all finishing
// late: at twice the sustained rate, make bench's overload rows served 319
// calls a second with 1000 a connection and 2,442 with 128 (docs/bench.md,
// "Overload").
func TestDefaultStreamLimitKeepsTheQueueInTheClient(t *testing.T) {
	t.Run("gRPC server", func(t *testing.T) {
		b := startBackend(t, "env1")
		gw := startGateway(t, testConfig(t, map[string][]string{"env1": {b.addr}}), nil)
		msg, err := proto.Marshal(&echopb.EchoRequest{SleepMs: 60_000})
		if err != nil {
			t.Fatal(err)
		}
		body := append([]byte{0, byte(len(msg) >> 24), byte(len(msg) >> 16), byte(len(msg) >> 8), byte(len(msg))}, msg...)
		streamLimitHolds(t, gw, headerBlock("env1"), body, "envgate_calls_in_flight")
	})
	t.Run("HTTP server", func(t *testing.T) {
		held := make(chan struct{})
		be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-held:
			case <-r.Context().Done():
			}
		}))
		t.Cleanup(be.Close)
		t.Cleanup(func() { close(held) })
		gw := startGateway(t, testConfig(t, map[string][]string{"env1": {strings.TrimPrefix(be.URL, "http://")}}), nil)
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
			{Name: ":path", Value: "/"}, {Name: ":authority", Value: "gw"}, {Name: "env", Value: "env1"}} {
			f.Sensitive = true // never indexed: every stream sends the same bytes
			_ = enc.WriteField(f)
		}
		streamLimitHolds(t, gw, block.Bytes(), nil, "envgate_http_requests_in_flight")
	})
}

// streamLimitHolds opens 100 streams (block, then body if any) that the
// upstream holds, then one more, which must be refused while the gauge of
// requests in flight stays at 100.
func streamLimitHolds(t *testing.T, gw *runningGateway, block, body []byte, gauge string) {
	t.Helper()
	const limit = 100
	c := dialRaw(t, gw.Addrs()[0])
	open := func(id uint32) {
		t.Helper()
		ok := c.sendHeaders(id, block, body == nil)
		if ok && body != nil {
			ok = c.write(func(fr *http2.Framer) error { return fr.WriteData(id, true, body) })
		}
		if !ok {
			t.Fatalf("stream %d: the gateway closed the connection", id)
		}
	}
	inFlight := func() string {
		m := scrape(t, gw, "/metrics")
		i := strings.Index(m, "\n"+gauge+" ")
		if i < 0 {
			t.Fatalf("no %s in the metrics", gauge)
		}
		v, _, _ := strings.Cut(m[i+len(gauge)+2:], "\n")
		return v
	}
	for i := range uint32(limit) {
		open(2*i + 1)
	}
	waitUntil(t, "the first 100 requests held by the upstream", func() bool { return inFlight() == "100" })
	over := uint32(2*limit + 1)
	open(over)
	if !c.waitUntil(10*time.Second, func() bool { _, ok := c.resets[over]; return ok }) {
		t.Fatalf("stream %d, past %d in flight, was taken (%s in flight), want it reset", over, limit, inFlight())
	}
	c.mu.Lock()
	code := c.resets[over]
	c.mu.Unlock()
	if code != http2.ErrCodeRefusedStream {
		t.Fatalf("stream %d reset with %v, want REFUSED_STREAM", over, code)
	}
	if n := inFlight(); n != "100" {
		t.Fatalf("%s in flight, want %d", n, limit)
	}
}
