package proxy

import (
	"context"
	"net"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/tracing"
)

// SetTracing has each call traced: a server span per call, a child of the
// client's (from prop's headers), injected into the upstream request in
// its place. Without it (the default) nothing is traced and nothing is
// spent on it.
func (p *Proxy) SetTracing(t trace.Tracer, prop propagation.TextMapPropagator) {
	p.tracer, p.prop = t, prop
}

// mdCarrier reads and writes gRPC metadata for a propagator.
type mdCarrier metadata.MD

func (c mdCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c mdCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c mdCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// startSpan starts the call's span under the client's trace context.
func (p *Proxy) startSpan(ctx context.Context, method string) (context.Context, trace.Span) {
	md, _ := metadata.FromIncomingContext(ctx)
	ctx = p.prop.Extract(ctx, mdCarrier(md))
	service, name, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	attrs := []attribute.KeyValue{semconv.RPCSystemGRPC, semconv.RPCService(service), semconv.RPCMethod(name)}
	if a := md.Get(":authority"); len(a) > 0 {
		if host, _, err := net.SplitHostPort(a[0]); err == nil {
			attrs = append(attrs, semconv.ServerAddress(host))
		} else {
			attrs = append(attrs, semconv.ServerAddress(a[0]))
		}
	}
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		if host, _, err := net.SplitHostPort(pr.Addr.String()); err == nil {
			attrs = append(attrs, semconv.ClientAddress(host))
		}
	}
	return p.tracer.Start(ctx, strings.TrimPrefix(method, "/"), trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
}

// injectSpan writes the call's span into the upstream metadata, in place
// of the client's trace headers.
func (p *Proxy) injectSpan(ctx context.Context, md metadata.MD) {
	for _, k := range p.prop.Fields() {
		delete(md, k)
	}
	p.prop.Inject(ctx, mdCarrier(md))
}

// endSpan records how the call went: the OTel gRPC conventions'
// attributes, envgate's routing (environment, route, destination,
// upstream endpoint), and an error status for the codes the conventions
// count as a server's errors.
func endSpan(span trace.Span, c *call, err error) {
	code := status.Code(err)
	r := tracing.Routed{Env: c.env, Route: c.route, Destination: c.dest, Upstream: c.upstream,
		Baseline: c.baseline, ResponseFlags: c.flags, Retries: c.retries}
	span.SetAttributes(r.Attributes([]attribute.KeyValue{semconv.RPCGRPCStatusCodeKey.Int(int(code))})...)
	switch code {
	case codes.Unknown, codes.DeadlineExceeded, codes.Unimplemented, codes.Internal, codes.Unavailable, codes.DataLoss:
		span.SetStatus(otelcodes.Error, status.Convert(err).Message())
	}
	span.End()
}
