package httpproxy

import (
	"context"
	"net"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/envgate/envgate/gateway/internal/tracing"
)

// startSpan starts the request's server span under the client's trace
// context, with the OTel HTTP conventions' request attributes.
func (p *Proxy) startSpan(r *http.Request) (context.Context, trace.Span) {
	ctx := p.o.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	attrs := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String(r.Method),
		semconv.URLPath(r.URL.Path),
		semconv.URLScheme(scheme),
		semconv.NetworkProtocolVersion(protocolVersion(r)),
		semconv.UserAgentOriginal(r.UserAgent()),
	}
	if host, _, err := net.SplitHostPort(r.Host); err == nil {
		attrs = append(attrs, semconv.ServerAddress(host))
	} else if r.Host != "" {
		attrs = append(attrs, semconv.ServerAddress(r.Host))
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		attrs = append(attrs, semconv.ClientAddress(host))
	}
	// The conventions' span name is the method (the route template, which
	// a proxy does not have, would follow it).
	return p.o.Tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
}

func protocolVersion(r *http.Request) string {
	if r.ProtoMajor == 2 {
		return "2"
	}
	return "1.1"
}

// injectSpan writes the request's span into the upstream headers, in place
// of the client's trace headers.
func (p *Proxy) injectSpan(ctx context.Context, h http.Header) {
	for _, k := range p.o.Propagator.Fields() {
		h.Del(k)
	}
	p.o.Propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// endSpan records the response: status code, envgate's routing, and an
// error status for 5xx (the conventions' rule for a server span).
func endSpan(span trace.Span, rq *request, code int) {
	r := tracing.Routed{Env: rq.dec.Env, Destination: rq.dec.Destination.Host(), Upstream: rq.ep.Addr,
		Baseline: rq.dec.Baseline, ResponseFlags: rq.responseFlags(), Retries: rq.retries}
	if rq.dec.Rule != nil {
		r.Route = rq.dec.Rule.Source
	}
	span.SetAttributes(r.Attributes([]attribute.KeyValue{semconv.HTTPResponseStatusCode(code)})...)
	if code >= 500 {
		span.SetStatus(otelcodes.Error, http.StatusText(code))
	}
	span.End()
}
