package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/envgate/envgate/proto/echopb"
)

// failingUpstream is an HTTP/2 server that answers every stream the same
// failing way, counting the streams (the gateway's attempts):
// "unavailable" a trailers-only grpc-status 14 (HTTP status 200),
// "reset" RST_STREAM INTERNAL_ERROR, "refused" RST_STREAM REFUSED_STREAM,
// "hang" nothing at all.
func failingUpstream(t *testing.T, mode string) (addr string, attempts *atomic.Int32) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	attempts = &atomic.Int32{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() { serveFailing(nc, mode, attempts) })
		}
	})
	return lis.Addr().String(), attempts
}

func serveFailing(nc net.Conn, mode string, attempts *atomic.Int32) {
	defer nc.Close()
	if _, err := io.ReadFull(nc, make([]byte, len(http2.ClientPreface))); err != nil {
		return
	}
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if fr.WriteSettings() != nil {
		return
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			attempts.Add(1)
			switch mode {
			case "unavailable":
				var hb bytes.Buffer
				enc := hpack.NewEncoder(&hb)
				for _, h := range [][2]string{{":status", "200"}, {"content-type", "application/grpc"}, {"grpc-status", "14"}, {"grpc-message", "down for maintenance"}} {
					_ = enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
				}
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
			case "reset":
				_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeInternal)
			case "refused":
				_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
			}
		}
	}
}

// Retry conditions as Envoy applies them to a gRPC call
// (source/common/router/retry_state_impl.cc): the gRPC conditions act on an
// answer's grpc-status (wouldRetryFromHeaders); 5xx, gateway-error and
// reset act on resets, not on a trailers-only UNAVAILABLE, whose HTTP
// status is 200 (wouldRetryFromReset); refused-stream only on
// REFUSED_STREAM; a per-try timeout is retried only under 5xx or
// gateway-error (RetryStateImpl::shouldHedgeRetryPerTryTimeout's note).
// Istio's default policy (no retries field: connect-failure,
// refused-stream, unavailable, cancelled, retriable-status-codes; 2
// attempts) retries no reset. Each row counts the attempts the backend saw.
func TestRetryConditionsAsEnvoy(t *testing.T) {
	for _, tc := range []struct {
		name, retries, mode string
		want                int32
	}{
		{"5xx ignores a trailers-only UNAVAILABLE", `{attempts: 2, retryOn: "5xx"}`, "unavailable", 1},
		{"unavailable retries it", `{attempts: 2, retryOn: "unavailable"}`, "unavailable", 3},
		{"5xx retries a reset", `{attempts: 2, retryOn: "5xx"}`, "reset", 3},
		{"reset retries a reset", `{attempts: 2, retryOn: "reset"}`, "reset", 3},
		{"unavailable does not retry a reset", `{attempts: 2, retryOn: "unavailable"}`, "reset", 1},
		{"Istio's default: no retry of a reset", "", "reset", 1},
		{"Istio's default: refused stream retried", "", "refused", 3},
		{"Istio's default: UNAVAILABLE retried", "", "unavailable", 3},
		{"per-try timeout not under unavailable", `{attempts: 2, retryOn: "unavailable", perTryTimeout: 100ms}`, "hang", 1},
		{"per-try timeout under gateway-error", `{attempts: 2, retryOn: "gateway-error", perTryTimeout: 100ms}`, "hang", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, attempts := failingUpstream(t, tc.mode)
			rule := "  - route: [{destination: {host: app-service.env1.svc.cluster.local}}]\n"
			if tc.retries != "" {
				rule += "    retries: " + tc.retries + "\n"
			}
			gw := vsGateway(t, fmt.Sprintf(vsHead, "retries")+rule, map[string][]string{"env1": {addr}})
			c := echoClient(t, gw.Addrs()[0])
			start := time.Now()
			_, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{})
			if err == nil {
				t.Fatal("the call succeeded")
			}
			if n := attempts.Load(); n != tc.want {
				t.Fatalf("%d attempts (%v), want %d", n, err, tc.want)
			}
			// Envoy's back-off: under 25 ms, then under 50 ms.
			if tc.want == 3 && tc.mode != "hang" && time.Since(start) > 2*time.Second {
				t.Fatalf("3 attempts took %v", time.Since(start))
			}
			if tc.mode == "unavailable" && !strings.Contains(err.Error(), "down for maintenance") {
				t.Fatalf("error %v, want the backend's own", err)
			}
		})
	}
}
