// Package tracing builds the gateway's OpenTelemetry tracer: an OTLP
// exporter (gRPC or HTTP) batching spans to a collector, a parent-based
// sampler (a request that arrives sampled or not keeps that decision; a
// root is sampled at a ratio), and the propagators the gateway reads and
// writes: W3C trace context and baggage-free B3, single and multi header,
// as Envoy's tracers read them.
package tracing

import (
	"context"
	"fmt"
	"net"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

// Options configure the exporter and sampler.
type Options struct {
	// Endpoint is the collector's OTLP address, host:port.
	Endpoint string
	// Protocol is "grpc" (OTLP/gRPC, port 4317 by convention) or "http"
	// (OTLP/HTTP protobuf, 4318).
	Protocol string
	// Insecure sends to the collector without TLS.
	Insecure bool
	// SamplingRatio is the share of root spans sampled, 0 to 1.
	SamplingRatio float64
	// ServiceName is the resource's service.name.
	ServiceName string
	// Version is service.version.
	Version string
}

// Tracing is a tracer provider and the propagators.
type Tracing struct {
	provider *sdktrace.TracerProvider
	// Tracer starts the gateway's spans.
	Tracer trace.Tracer
	// Propagator extracts a request's parent and injects the gateway's
	// span into the upstream request: W3C traceparent/tracestate, B3
	// single (b3) and multi (x-b3-*). Its Fields are every header the
	// gateway's span replaces, so a front deletes them before injecting.
	Propagator propagation.TextMapPropagator
}

// New starts the exporter. Spans are sent in batches in the background;
// Shutdown flushes them.
func New(ctx context.Context, o Options) (*Tracing, error) {
	var client otlptrace.Client
	switch o.Protocol {
	case "", "grpc":
		opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(o.Endpoint)}
		if o.Insecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		client = otlptracegrpc.NewClient(opts...)
	case "http":
		opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(o.Endpoint)}
		if o.Insecure {
			opts = append(opts, otlptracehttp.WithInsecure())
		}
		client = otlptracehttp.NewClient(opts...)
	default:
		return nil, fmt.Errorf("tracing: protocol %q is neither grpc nor http", o.Protocol)
	}
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	res := resource.NewSchemaless(semconv.ServiceName(o.ServiceName), semconv.ServiceVersion(o.Version))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(o.SamplingRatio))),
	)
	return &Tracing{
		provider: tp,
		Tracer:   tp.Tracer("github.com/envgate/envgate/gateway"),
		Propagator: replacing(propagation.NewCompositeTextMapPropagator(
			propagation.TraceContext{},
			b3.New(b3.WithInjectEncoding(b3.B3SingleHeader|b3.B3MultipleHeader)),
		)),
	}, nil
}

// replacingPropagator's Fields add x-b3-parentspanid to the propagator's:
// B3 never writes it, and a client's would name the client's span as the
// upstream's grandparent. Computed once: Fields is asked on every request.
type replacingPropagator struct {
	propagation.TextMapPropagator
	fields []string
}

func replacing(p propagation.TextMapPropagator) replacingPropagator {
	return replacingPropagator{p, append(p.Fields(), "x-b3-parentspanid")}
}

func (p replacingPropagator) Fields() []string { return p.fields }

// Routed is how envgate routed a call or request, for its span.
type Routed struct {
	Env, Route, Destination, Upstream, Baseline, ResponseFlags string
	Retries                                                    int
}

// Attributes are r's span attributes, both fronts' alike: envgate.* for
// the routing, and the OTel conventions' network.peer.* for the upstream
// endpoint. Empty values are left out.
func (r Routed) Attributes(attrs []attribute.KeyValue) []attribute.KeyValue {
	for _, kv := range [...]struct{ k, v string }{
		{"envgate.env", r.Env}, {"envgate.route", r.Route}, {"envgate.destination", r.Destination},
		{"envgate.upstream", r.Upstream}, {"envgate.baseline", r.Baseline}, {"envgate.response_flags", r.ResponseFlags},
	} {
		if kv.v != "" {
			attrs = append(attrs, attribute.String(kv.k, kv.v))
		}
	}
	if host, port, err := net.SplitHostPort(r.Upstream); err == nil {
		attrs = append(attrs, semconv.NetworkPeerAddress(host), attribute.String("network.peer.port", port))
	}
	if r.Retries > 0 {
		attrs = append(attrs, attribute.Int("envgate.retries", r.Retries))
	}
	return attrs
}

// Shutdown sends the spans still batched and stops the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	return t.provider.Shutdown(ctx)
}
