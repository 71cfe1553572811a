package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/internal/paritytest"
	"github.com/envgate/envgate/proto/echopb"
)

// accessLogRoutes route each environment's gRPC calls to its
// app-service and its HTTP requests to its hellosvc; "slow" has a route
// timeout, "flaky" retries.
func accessLogRoutes() string {
	var b strings.Builder
	for _, env := range []string{"ok", "empty", "down", "slow", "flaky", "broken"} {
		extra := ""
		switch env {
		case "slow":
			extra = "\n    timeout: 300ms"
		case "flaky":
			extra = "\n    retries: {attempts: 2, retryOn: \"unavailable,5xx\"}"
		}
		fmt.Fprintf(&b, `  - match: [{headers: {env: {exact: %[1]s}, content-type: {prefix: application/grpc}}}]
    route: [{destination: {host: app-service.%[1]s.svc.cluster.local}}]%[2]s
  - match: [{headers: {env: {exact: %[1]s}}}]
    route: [{destination: {host: hellosvc.%[1]s.svc.cluster.local}}]%[2]s
`, env, extra)
	}
	return b.String()
}

// logLine is the access log line carrying traceID, once it is written.
func logLine(t *testing.T, logs *lockedBuffer, traceID string) map[string]any {
	t.Helper()
	var line map[string]any
	waitUntil(t, "the access log line of trace "+traceID, func() bool {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `"trace_id":"`+traceID+`"`) {
				return json.Unmarshal([]byte(l), &line) == nil
			}
		}
		return false
	})
	return line
}

// Issue 14, point 3: the access log carries the fields of Envoy's default
// gateway log for each call and request, and Envoy's response flag for
// each way one fails (envoy source/common/stream_info/utility.cc
// ResponseFlagUtils, the flags' short names; router.cc sets UT in
// Filter::onUpstreamTimeout, UF/UR in Filter::onUpstreamReset, URX when
// the retry state refuses another try, UPE (and 502) for an upstream
// that breaks the protocol, NR in Filter::decodeHeaders with
// no route, UH when the cluster has no healthy host; DC in the connection
// manager when the client resets).
func TestAccessLogFieldsAndResponseFlags(t *testing.T) {
	b := startBackend(t, "ok")
	flaky := startBackend(t, "flaky")
	webAddr := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		default:
			fmt.Fprint(w, "hello")
		}
	}))
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := closed.Addr().String()
	closed.Close() // nothing listens there: connections are refused

	cfg := vsConfig(t, paritytest.VS("all", paritytest.T0, accessLogRoutes()), map[string][]string{
		"ok": {b.addr}, "hellosvc.ok": {webAddr},
		"down": {down}, "hellosvc.down": {down},
		"slow": {b.addr}, "hellosvc.slow": {webAddr},
		"flaky": {flaky.addr}, "hellosvc.flaky": {webAddr},
		"broken": {b.addr}, "hellosvc.broken": {startScriptedHTTPBackend(t, "SSH-2.0-OpenSSH_9.2\r\n\r\n", true).addr},
	}, func(c *config.Config) {
		on := true
		c.AccessLog = &on
	})
	// Discovered with no ready endpoint (refused in a static file).
	cfg.Discovery.Static["empty"], cfg.Discovery.Static["hellosvc.empty"] = []string{}, []string{}
	var logs lockedBuffer
	gw := startGatewayLogging(t, cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
	addr := gw.Addrs()[0]
	c := echoClient(t, addr)

	n := 0
	traceparent := func() (string, string) {
		n++
		id := fmt.Sprintf("%032x", 0xa11ce0000+n)
		return id, "00-" + id + "-00f067aa0ba902b7-01"
	}

	for _, tc := range []struct {
		name, env string
		req       *echopb.EchoRequest
		timeout   time.Duration
		flags     string
		want      map[string]any
	}{
		{"ok", "ok", &echopb.EchoRequest{}, 0, "-", map[string]any{
			"destination_service": "app-service.ok.svc.cluster.local", "upstream": b.addr, "code": "OK", "retries": 0.0}},
		{"no route", "nope", &echopb.EchoRequest{}, 0, "NR", map[string]any{"code": "Unimplemented", "destination_service": ""}},
		{"no healthy upstream", "empty", &echopb.EchoRequest{}, 0, "UH", map[string]any{"code": "Unavailable", "destination_service": "app-service.empty.svc.cluster.local"}},
		{"connection refused", "down", &echopb.EchoRequest{}, 0, "UF", map[string]any{"code": "Unavailable"}},
		{"route timeout", "slow", &echopb.EchoRequest{SleepMs: 5000}, 0, "UT", map[string]any{"code": "Unavailable"}},
		{"retries spent", "flaky", &echopb.EchoRequest{StatusCode: int32(codes.Unavailable)}, 0, "URX", map[string]any{"code": "Unavailable", "retries": 2.0, "upstream": flaky.addr}},
		// Longer than a premature reset (logged in the connection's
		// summary instead).
		{"client gone", "ok", &echopb.EchoRequest{SleepMs: 5000}, 1500 * time.Millisecond, "DC", nil},
	} {
		t.Run("gRPC "+tc.name, func(t *testing.T) {
			id, tp := traceparent()
			ctx := metadata.AppendToOutgoingContext(testCtx(t), "env", tc.env, "traceparent", tp, "x-forwarded-for", "203.0.113.7")
			if tc.timeout > 0 {
				// A cancel, not a deadline: a deadline travels as
				// grpc-timeout, and under load the gateway's copy could
				// expire before the client's RST_STREAM arrives.
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				defer time.AfterFunc(tc.timeout, cancel).Stop()
			}
			_, _ = c.Call(ctx, tc.req)
			line := logLine(t, &logs, id)
			if line["response_flags"] != tc.flags {
				t.Errorf("response_flags %v, want %s", line["response_flags"], tc.flags)
			}
			for k, v := range tc.want {
				if line[k] != v {
					t.Errorf("%s: %v, want %v", k, line[k], v)
				}
			}
			if line["authority"] != addr || !strings.HasPrefix(fmt.Sprint(line["user_agent"]), "grpc-go/") ||
				line["x_forwarded_for"] != "203.0.113.7, 127.0.0.1" && tc.flags != "NR" && tc.flags != "UH" ||
				line["request_id"] == "" || line["env"] != tc.env {
				t.Errorf("fields: %v", line)
			}
		})
	}

	for _, tc := range []struct {
		name, env, path string
		timeout         time.Duration
		status          float64
		flags           string
		want            map[string]any
	}{
		{"ok", "ok", "/", 0, 200, "-", map[string]any{"destination_service": "hellosvc.ok.svc.cluster.local", "upstream": webAddr}},
		{"no route", "nope", "/", 0, 404, "NR", nil},
		{"no healthy upstream", "empty", "/", 0, 503, "UH", map[string]any{"destination_service": "hellosvc.empty.svc.cluster.local"}},
		// Istio's default retry policy retries a connect failure twice
		// (istio pilot/pkg/networking/core/route/retry/retry.go DefaultPolicy), after
		// which Envoy writes both flags.
		{"connection refused", "down", "/", 0, 503, "UF,URX", map[string]any{"retries": 2.0}},
		{"route timeout", "slow", "/slow", 0, 504, "UT", nil},
		{"retries spent", "flaky", "/fail", 0, 503, "URX", map[string]any{"retries": 2.0}},
		// An answer that is not HTTP: Envoy's UPE and 502 (router.cc
		// Filter::onUpstreamReset, streamResetReasonToResponseFlag).
		{"protocol error", "broken", "/", 0, 502, "UPE", nil},
		// Longer than a premature reset for HTTP/2 (its line would be in
		// the connection's summary instead).
		{"client gone", "ok", "/slow", 1500 * time.Millisecond, 499, "DC", nil},
	} {
		// HTTP/1.1 takes the fast path; h2c (no body) the HTTP/2 relay.
		for _, client := range []struct {
			name string
			c    *http.Client
		}{{"HTTP/1.1", http.DefaultClient}, {"h2c", h2cClient(t)}} {
			t.Run("HTTP "+tc.name+" "+client.name, func(t *testing.T) {
				id, tp := traceparent()
				ctx := testCtx(t)
				if tc.timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tc.timeout)
					defer cancel()
				}
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+tc.path, nil)
				req.Header.Set("env", tc.env)
				req.Header.Set("traceparent", tp)
				req.Header.Set("User-Agent", "curl/8.14.1")
				if resp, err := client.c.Do(req); err == nil {
					resp.Body.Close()
				}
				line := logLine(t, &logs, id)
				if line["response_flags"] != tc.flags || line["status"] != tc.status {
					t.Errorf("response_flags %v status %v, want %s %v", line["response_flags"], line["status"], tc.flags, tc.status)
				}
				for k, v := range tc.want {
					if line[k] != v {
						t.Errorf("%s: %v, want %v", k, line[k], v)
					}
				}
				if line["user_agent"] != "curl/8.14.1" || line["authority"] != addr || line["request_id"] == "" {
					t.Errorf("fields: %v", line)
				}
			})
		}
	}
}
