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
	h.Del("X-B3-Parentspanid") // not a B3 propagator field; would name the client's span
	p.o.Propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// endSpan records the response: status code, envgate's routing, and an
// error status for 5xx (the conventions' rule for a server span).
func endSpan(span trace.Span, rq *request, code int) {
	attrs := []attribute.KeyValue{semconv.HTTPResponseStatusCode(code)}
	for k, v := range map[string]string{"envgate.env": rq.dec.Env, "envgate.destination": rq.dec.Destination.Host(),
		"envgate.upstream": rq.ep.Addr, "envgate.baseline": rq.dec.Baseline, "envgate.response_flags": rq.responseFlags()} {
		if v != "" {
			attrs = append(attrs, attribute.String(k, v))
		}
	}
	if rq.dec.Rule != nil {
		attrs = append(attrs, attribute.String("envgate.route", rq.dec.Rule.Source))
	}
	if rq.ep.Addr != "" {
		if host, port, err := net.SplitHostPort(rq.ep.Addr); err == nil {
			attrs = append(attrs, semconv.NetworkPeerAddress(host), attribute.String("network.peer.port", port))
		}
	}
	if rq.retries > 0 {
		attrs = append(attrs, attribute.Int("envgate.retries", rq.retries))
	}
	span.SetAttributes(attrs...)
	if code >= 500 {
		span.SetStatus(otelcodes.Error, http.StatusText(code))
	}
	span.End()
}
