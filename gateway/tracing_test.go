package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"google.golang.org/grpc/metadata"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/proto/echopb"
)

// freeAddr is a loopback address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startCollector runs the OpenTelemetry Collector's own OTLP receiver
// (go.opentelemetry.io/collector/receiver/otlpreceiver) for protocol
// ("grpc" or "http") into a sink, and returns its address.
func startCollector(t *testing.T, protocol string) (string, *consumertest.TracesSink) {
	t.Helper()
	f := otlpreceiver.NewFactory()
	cfg := f.CreateDefaultConfig().(*otlpreceiver.Config)
	addr := freeAddr(t)
	if protocol == "grpc" {
		cfg.Protocols.GRPC.GetOrInsertDefault().NetAddr.Endpoint = addr
	} else {
		cfg.Protocols.HTTP.GetOrInsertDefault().ServerConfig.NetAddr.Endpoint = addr
	}
	sink := new(consumertest.TracesSink)
	r, err := f.CreateTraces(context.Background(), receivertest.NewNopSettings(f.Type()), cfg, sink)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Shutdown(context.Background()) })
	return addr, sink
}

// receivedSpan is the span of traceID the collector received.
func receivedSpan(t *testing.T, sink *consumertest.TracesSink, traceID string) (ptrace.Span, string) {
	t.Helper()
	var found ptrace.Span
	var service string
	waitUntil(t, "the collector receiving the span of trace "+traceID, func() bool {
		for _, td := range sink.AllTraces() {
			for i := 0; i < td.ResourceSpans().Len(); i++ {
				rs := td.ResourceSpans().At(i)
				for j := 0; j < rs.ScopeSpans().Len(); j++ {
					ss := rs.ScopeSpans().At(j)
					for k := 0; k < ss.Spans().Len(); k++ {
						if s := ss.Spans().At(k); s.TraceID().String() == traceID {
							found = s
							if v, ok := rs.Resource().Attributes().Get("service.name"); ok {
								service = v.Str()
							}
							return true
						}
					}
				}
			}
		}
		return false
	})
	return found, service
}

func attr(s ptrace.Span, key string) string {
	v, ok := s.Attributes().Get(key)
	if !ok {
		return "<none>"
	}
	return v.AsString()
}

// Issue 14, point 1: with tracing on, every gRPC call and HTTP request is
// a server span exported over OTLP (gRPC and HTTP) to a real collector
// receiver, a child of the client's span whichever of W3C trace context,
// B3 single or B3 multi it came with; the backend gets the gateway's span
// as its parent in every format; a request without a sampled parent is
// sampled at samplingRatio (0 here: not exported, still propagated); the
// access log names the trace.
func TestTracingToCollector(t *testing.T) {
	for _, protocol := range []string{"grpc", "http"} {
		t.Run("OTLP over "+protocol, func(t *testing.T) {
			collector, sink := startCollector(t, protocol)
			b := startBackend(t, "env1")
			var mu sync.Mutex
			var seen http.Header // what the HTTP backend got
			web := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				seen = r.Header.Clone()
				mu.Unlock()
				fmt.Fprint(w, "hello")
			}))
			cfg := testConfig(t, map[string][]string{"env1": {b.addr}, "web": {web}})
			zero := 0.0
			cfg.Tracing = &config.Tracing{Endpoint: collector, Protocol: protocol, Insecure: true, SamplingRatio: &zero}
			cfg.Defaults()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			var logs lockedBuffer
			on := true
			cfg.AccessLog = &on
			gw := startGateway(t, cfg, &logs)
			c := echoClient(t, gw.Addrs()[0])

			const parent = "00f067aa0ba902b7"
			for _, tc := range []struct {
				name    string
				headers []string // sent by the client
				traceID string
			}{
				{"W3C", []string{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + parent + "-01", "tracestate", "vendor=opaque"}, "4bf92f3577b34da6a3ce929d0e0e4736"},
				{"B3 single", []string{"b3", "80f198ee56343ba864fe8b2a57d3eff7-" + parent + "-1"}, "80f198ee56343ba864fe8b2a57d3eff7"},
				{"B3 multi", []string{"x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124", "x-b3-spanid", parent, "x-b3-sampled", "1", "x-b3-parentspanid", "05e3ac9a4f6e3b90"}, "463ac35c9f6413ad48485a3953bb6124"},
			} {
				t.Run("gRPC, "+tc.name, func(t *testing.T) {
					ctx := metadata.AppendToOutgoingContext(withEnv(testCtx(t), "env1"), tc.headers...)
					resp, err := c.Call(ctx, &echopb.EchoRequest{IncludeDetails: true})
					if err != nil {
						t.Fatal(err)
					}
					span, service := receivedSpan(t, sink, tc.traceID)
					if span.ParentSpanID().String() != parent || span.Kind() != ptrace.SpanKindServer || service != "envgate" {
						t.Errorf("span parent %s kind %v service %q, want parent %s, server, envgate", span.ParentSpanID(), span.Kind(), service, parent)
					}
					for k, want := range map[string]string{"rpc.system": "grpc", "rpc.service": "echo.EchoService", "rpc.method": "Call",
						"rpc.grpc.status_code": "0", "envgate.env": "env1", "envgate.upstream": b.addr,
						"envgate.destination": "app-service.env1.svc.cluster.local"} {
						if got := attr(span, k); got != want {
							t.Errorf("%s = %q, want %q", k, got, want)
						}
					}
					if span.Name() != "echo.EchoService/Call" {
						t.Errorf("span name %q", span.Name())
					}
					md := resp.GetRequestMetadata()
					sid := span.SpanID().String()
					for k, want := range map[string]string{
						"traceparent":  "00-" + tc.traceID + "-" + sid + "-01",
						"b3":           tc.traceID + "-" + sid + "-1",
						"x-b3-traceid": tc.traceID, "x-b3-spanid": sid, "x-b3-sampled": "1",
					} {
						if got := string(md[k]); got != want {
							t.Errorf("the backend got %s: %q, want %q", k, got, want)
						}
					}
					if _, ok := md["x-b3-parentspanid"]; ok {
						t.Errorf("the client's x-b3-parentspanid reached the backend: %q", md["x-b3-parentspanid"])
					}
					if tc.name == "W3C" && string(md["tracestate"]) != "vendor=opaque" {
						t.Errorf("tracestate %q", md["tracestate"])
					}
					waitUntil(t, "the access log naming the trace", func() bool {
						return strings.Contains(logs.String(), `"trace_id":"`+tc.traceID+`"`)
					})
				})
			}

			t.Run("HTTP, W3C", func(t *testing.T) {
				const traceID = "0af7651916cd43dd8448eb211c80319c"
				req, _ := http.NewRequestWithContext(testCtx(t), "GET", "http://"+gw.Addrs()[0]+"/x?y=1", nil)
				req.Header.Set("env", "web") // app-service.web: the HTTP backend
				req.Header.Set("traceparent", "00-"+traceID+"-"+parent+"-01")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				span, _ := receivedSpan(t, sink, traceID)
				if span.ParentSpanID().String() != parent || span.Name() != "GET" {
					t.Errorf("span %q parent %s", span.Name(), span.ParentSpanID())
				}
				for k, want := range map[string]string{"http.request.method": "GET", "url.path": "/x", "envgate.env": "web",
					"http.response.status_code": "200", "envgate.upstream": web} {
					if got := attr(span, k); got != want {
						t.Errorf("%s = %q, want %q", k, got, want)
					}
				}
				mu.Lock()
				got := seen.Get("traceparent")
				b3 := seen.Get("b3")
				mu.Unlock()
				sid := span.SpanID().String()
				if got != "00-"+traceID+"-"+sid+"-01" || b3 != traceID+"-"+sid+"-1" {
					t.Errorf("the HTTP backend got traceparent %q b3 %q, want the gateway's span %s", got, b3, sid)
				}
			})

			t.Run("no sampled parent, ratio 0", func(t *testing.T) {
				resp, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{IncludeDetails: true})
				if err != nil {
					t.Fatal(err)
				}
				tp := string(resp.GetRequestMetadata()["traceparent"])
				parts := strings.Split(tp, "-")
				if len(parts) != 4 || parts[3] != "00" {
					t.Fatalf("the backend got traceparent %q, want a new unsampled one", tp)
				}
				if _, err := hex.DecodeString(parts[1]); err != nil {
					t.Fatal(err)
				}
				// A sampled call made after it is exported; the unsampled
				// one before it must not have been.
				ctx := metadata.AppendToOutgoingContext(withEnv(testCtx(t), "env1"), "traceparent", "00-11111111111111111111111111111111-"+parent+"-01")
				if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
					t.Fatal(err)
				}
				receivedSpan(t, sink, "11111111111111111111111111111111")
				for _, td := range sink.AllTraces() {
					rs := td.ResourceSpans()
					for i := 0; i < rs.Len(); i++ {
						for j := 0; j < rs.At(i).ScopeSpans().Len(); j++ {
							spans := rs.At(i).ScopeSpans().At(j).Spans()
							for k := 0; k < spans.Len(); k++ {
								if spans.At(k).TraceID().String() == parts[1] {
									t.Errorf("the unsampled call was exported")
								}
							}
						}
					}
				}
			})
		})
	}
}
