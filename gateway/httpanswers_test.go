package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envgate/envgate/internal/paritytest"
)

// flakyBackend answers the first fail requests with status, then 200; it
// counts the requests and checks each carries the whole body.
type flakyBackend struct {
	fail   int32
	status int
	delay  time.Duration
	n      atomic.Int32
	bodies chan string
}

func (b *flakyBackend) start(t *testing.T, _ string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.bodies = make(chan string, 16)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := b.n.Add(1)
		body, _ := io.ReadAll(r.Body)
		select {
		case b.bodies <- string(body):
		default:
		}
		if b.delay > 0 {
			select {
			case <-time.After(b.delay):
			case <-r.Context().Done():
				return
			}
		}
		if n <= b.fail {
			w.WriteHeader(b.status)
			fmt.Fprintf(w, "failure %d", n)
			return
		}
		fmt.Fprintf(w, "ok after %d", n)
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return lis.Addr().String()
}

// The HTTP front answers as Envoy does when it cannot route or the
// upstream fails, each with envgate's reason; it retries as the route
// says, with Envoy's HTTP conditions, sending a small body again whole.
func TestHTTPEnvoyAnswersAndRetries(t *testing.T) {
	route := func(extra string) string {
		return paritytest.VS("a", paritytest.T0, "  - route: [{destination: {host: app-service.env1.svc.cluster.local}}]"+extra)
	}
	for _, tc := range []struct {
		name, cite, yaml string
		backend          *flakyBackend
		wantStatus       int
		wantBody         string
		wantTries        int32
	}{
		// router.cc Filter::onUpstreamTimeout: 504, UT.
		{"route timeout", "envoy source/common/router/router.cc Filter::onUpstreamTimeout",
			route("\n    timeout: 200ms"), &flakyBackend{delay: 5 * time.Second}, 504, "upstream request timeout: the route's timeout of 200ms expired", 1},
		// retry_state_impl.cc: 5xx retries any 5xx; the third try answers.
		{"retry on 5xx", "envoy source/common/router/retry_state_impl.cc RetryStateImpl::wouldRetryFromHeaders (5xx)",
			route("\n    retries: {attempts: 2, retryOn: 5xx}"), &flakyBackend{fail: 2, status: 503}, 200, "ok after 3", 3},
		// gateway-error is 502, 503 and 504 only: a 500 is not retried.
		{"gateway-error does not retry 500", "envoy source/common/router/retry_state_impl.cc RetryStateImpl::wouldRetryFromHeaders (gateway-error)",
			route("\n    retries: {attempts: 2, retryOn: gateway-error}"), &flakyBackend{fail: 1, status: 500}, 500, "failure 1", 1},
		// A status code in retryOn is a retriable status code.
		{"retriable status code", "istio pilot/pkg/networking/core/route/retry/retry.go ConvertPolicy, parseRetryOn; envoy retry_state_impl.cc (retriable-status-codes)",
			route("\n    retries: {attempts: 3, retryOn: \"409\"}"), &flakyBackend{fail: 1, status: 409}, 200, "ok after 2", 2},
		// Istio's default policy retries connect failures, refused
		// streams and gRPC statuses, with no retriable status codes: an
		// HTTP 503 answer is not retried.
		{"default policy does not retry a 503", "istio pilot/pkg/networking/core/route/retry/retry.go DefaultPolicy (retriable-status-codes with none)",
			route(""), &flakyBackend{fail: 1, status: 503}, 503, "failure 1", 1},
	} {
		// HTTP/1.1 takes the fast path, h2c the full server's; both
		// answer alike.
		for _, client := range []struct {
			name string
			c    func(*testing.T) *http.Client
		}{{"HTTP/1.1", func(*testing.T) *http.Client { return http.DefaultClient }}, {"h2c", h2cClient}} {
			t.Run(tc.name+" "+client.name, func(t *testing.T) {
				be := &flakyBackend{fail: tc.backend.fail, status: tc.backend.status, delay: tc.backend.delay}
				p := startParityWith(t, tc.yaml, be.start)
				req, _ := http.NewRequest("POST", "http://"+p.gw.Addrs()[0]+"/orders", strings.NewReader("order=42"))
				resp, err := client.c(t).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != tc.wantStatus || !strings.HasPrefix(string(body), tc.wantBody) || be.n.Load() != tc.wantTries {
					t.Fatalf("%d %q after %d tries, want %d %q after %d (%s)", resp.StatusCode, body, be.n.Load(), tc.wantStatus, tc.wantBody, tc.wantTries, tc.cite)
				}
				for range tc.wantTries {
					if b := <-be.bodies; b != "order=42" {
						t.Fatalf("a try carried %q, not the whole body", b)
					}
				}
			})
		}
	}

	// No endpoint at all: 503 no healthy upstream (router.cc
	// Filter::decodeHeaders, UH); an endpoint that refuses connections:
	// 503 connection failure (Filter::onUpstreamReset, UF).
	t.Run("no healthy upstream and connect failure", func(t *testing.T) {
		closed := func(_ *testing.T, ns string) string {
			if ns == "nowhere" {
				return ""
			}
			return "127.0.0.1:1"
		}
		p := startParityWith(t, paritytest.VS("a", paritytest.T0, `  - match: [{uri: {prefix: /gone}}]
    route: [{destination: {host: app-service.nowhere.svc.cluster.local}}]
  - route: [{destination: {host: app-service.env1.svc.cluster.local}}]`), closed)
		for path, want := range map[string]string{
			"/gone": "no healthy upstream: ",
			"/x":    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
		} {
			resp, err := http.Get("http://" + p.gw.Addrs()[0] + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != 503 || !strings.HasPrefix(string(body), want) {
				t.Fatalf("%s: %d %q, want 503 %q", path, resp.StatusCode, body, want)
			}
		}
	})
}

// h2cClient speaks HTTP/2 with prior knowledge (REST over h2c); its
// connections close when the test ends, before a gateway started earlier
// waits for them to.
func h2cClient(t *testing.T) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}
