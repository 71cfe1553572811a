// Package httpproxy is the gateway's HTTP front: HTTP/1.1 (keep-alive,
// chunked bodies, Expect: 100-continue, WebSocket upgrades) and REST over
// HTTP/2, routed by the same table and the same route.Decision as gRPC
// calls, and answered as Envoy answers when it cannot route: 404 with no
// route, 503 "no healthy upstream", 504 "upstream request timeout", each
// with a line saying why.
//
// HTTP/1.1 connections are served by H1Server, the fast path (fast.go),
// which hands what it does not take to Proxy.ServeHTTP, the full path (Go's
// HTTP server, REST over HTTP/2 too). Both send to HTTP/1.1 upstreams on
// one pool of connections (h1pool.go; the full path through serveDirect,
// upstream1.go); net/http/httputil.ReverseProxy remains for protocol
// upgrades, Expect: 100-continue, HTTP/2 upstreams and tracing. Hop-by-hop
// headers are dropped as RFC 9110 section 7.6.1 says; bodies stream
// through fixed-size buffers, and a request body is held whole only to be
// retried, and only up to maxReplayBytes.
package httpproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/envgate/envgate/gateway/internal/forwarded"
	"github.com/envgate/envgate/gateway/internal/istiometrics"
	"github.com/envgate/envgate/gateway/internal/route"
)

// Routes returns the routing table in force.
type Routes func() *route.Table

// Protocol is what an upstream port speaks.
type Protocol int

const (
	// HTTP1 is HTTP/1.1: Envoy's default for a cluster, so Istio's for a
	// gateway's destination whose port names no HTTP/2 protocol.
	HTTP1 Protocol = iota
	// HTTP2 is HTTP/2 (h2c in plaintext, ALPN h2 over TLS).
	HTTP2
)

func (p Protocol) String() string {
	if p == HTTP2 {
		return "HTTP/2"
	}
	return "HTTP/1.1"
}

// ProtocolOf is the upstream protocol of a Service port, as Istio picks it
// for a gateway's cluster: the port's appProtocol, else its name's prefix
// before "-" (pkg/config/kube/conversion.go ConvertProtocol), HTTP/2 for
// http2, grpc, grpc-web and kubernetes.io/h2c (pkg/config/protocol
// Instance.IsHTTP2; cluster_builder.go setUpstreamProtocol), HTTP/1.1 for
// anything else: at a gateway Istio does not use the downstream protocol
// for an unnamed port.
func ProtocolOf(name string) Protocol {
	if strings.EqualFold(name, "kubernetes.io/h2c") || len(name) >= 8 && strings.EqualFold(name[:8], "grpc-web") {
		return HTTP2
	}
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	switch strings.ToLower(name) {
	case "http2", "grpc":
		return HTTP2
	}
	return HTTP1
}

// Endpoint is one upstream address and how to reach it.
type Endpoint struct {
	Addr     string
	Protocol Protocol
	// TLS, when set, is the client TLS of the destination's policy;
	// TLSKey names it, so destinations with one policy share connections.
	TLS    *tls.Config
	TLSKey string
}

// Upstreams give an endpoint of a destination for one try: an error says
// why there is none (wrapping ErrNoHealthyUpstream when the destination
// exists but nothing is ready).
type Upstreams interface {
	Endpoint(d route.Destination) (Endpoint, error)
}

// Observer is told of every request, for metrics.
type Observer interface {
	RequestStarted()
	RequestDone(env string, code int, d time.Duration, bytesIn, bytesOut int64)
}

// Options configure a Proxy.
type Options struct {
	// EnvHeader is logged with each request.
	EnvHeader string
	// Limiter, when set, bounds the requests in flight (with the gRPC
	// calls): a request past it is answered 503 at once.
	Limiter Limiter
	// AccessLog, when set, gets one line per request.
	AccessLog *slog.Logger
	// Log is the proxy's own log (transport errors).
	Log      *slog.Logger
	Observer Observer
	// Tracer and Propagator, when set, trace each request: a server span,
	// a child of the client's, injected into the upstream request.
	Tracer     trace.Tracer
	Propagator propagation.TextMapPropagator
	// Exchanges, when set, receives the account of each finished request
	// (Istio's metrics, envgate's retry count).
	Exchanges interface {
		Exchange(istiometrics.Exchange)
	}
	// Pick returns a number in [0, 1) for weighted destinations.
	Pick func() float64
	// Fallback, when set, may name the baseline's destination for one that
	// has no service.
	Fallback func(route.Destination) (route.Destination, bool)
	// Dial opens upstream connections (nil: net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnDial, when set, is told of every upstream connection attempt's
	// result (for the metrics).
	OnDial func(error)
	// DebugHeader adds x-envgate-upstream to every response.
	DebugHeader bool
	// MaxResponseHeaderBytes bounds an upstream's response headers.
	MaxResponseHeaderBytes int
	// IdleConnTimeout closes upstream connections idle this long.
	IdleConnTimeout time.Duration
	// MaxIdleConnsPerHost bounds the idle HTTP/1.1 connections kept per
	// endpoint; 0 means DefaultMaxIdleConnsPerHost.
	MaxIdleConnsPerHost int
}

// Response headers envgate adds (as the gRPC front does).
const (
	UpstreamHeader = "X-Envgate-Upstream"
	BaselineHeader = "X-Envgate-Baseline"
)

// prematureReset is how young a request the client abandons counts as
// reset early: Envoy's premature_reset_min_stream_lifetime_seconds.
const prematureReset = time.Second

// DefaultMaxIdleConnsPerHost keeps every upstream HTTP/1.1 connection a
// burst opened, up to Envoy's default circuit breaker on connections per
// cluster (max_connections, 1024), as Envoy's pool keeps its connections
// until they idle out (IdleConnTimeout). Fewer would close, at every burst
// past them, connections the next burst dials again. Each idle connection
// holds its two 4 KiB buffers.
const DefaultMaxIdleConnsPerHost = 1024

// maxReplayBytes bounds the request body kept to send again on a retry,
// as Envoy bounds its retry buffer; a larger or unsized body is not
// retried.
const maxReplayBytes = 64 << 10

// Proxy is the HTTP front's handler.
type Proxy struct {
	routes Routes
	ups    Upstreams
	o      Options
	rp     *httputil.ReverseProxy

	// transports are the upstream clients, one per protocol and TLS
	// policy: bounded by the policies the configuration names.
	mu         sync.Mutex // guards transports
	transports map[transportKey]*http.Transport

	// pool holds the fast path's upstream HTTP/1.1 connections.
	pool *h1Pool
}

type transportKey struct {
	proto  Protocol
	tlsKey string
}

// New returns the HTTP front.
func New(routes Routes, ups Upstreams, o Options) *Proxy {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.MaxIdleConnsPerHost == 0 {
		o.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	if o.IdleConnTimeout == 0 {
		o.IdleConnTimeout = time.Hour // Envoy's upstream idle_timeout
	}
	if o.Dial == nil {
		o.Dial = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	if dial, onDial := o.Dial, o.OnDial; onDial != nil {
		o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			onDial(err)
			return c, err
		}
	}
	p := &Proxy{routes: routes, ups: ups, o: o, transports: map[transportKey]*http.Transport{}}
	p.pool = newH1Pool(o.Dial, o.MaxIdleConnsPerHost, o.IdleConnTimeout)
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      (*retrier)(p),
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.upstreamError,
		BufferPool:     bufferPool{},
		ErrorLog:       log.New(slogWriter{o.Log}, "", 0),
	}
	return p
}

// request is one request's state, from routing to its log line.
type request struct {
	id       string
	start    time.Time
	end      time.Time // the answer relayed, if the path read the clock then
	dec      route.Decision
	ep       Endpoint // the endpoint of the latest try
	body     []byte   // the whole request body, kept for retries
	canRetry bool
	retries  int
	timeout  bool // the route's timeout expired
	upErr    error
	flags    string // Envoy's response flags, for the log
	urx      bool   // the retries were spent on retryable failures
	xff      string // the x-forwarded-for sent upstream
	traceID  string // the gateway's span's trace, when tracing
	prefix   string // the matched part of the path, for rewrite.uri
}

type requestKey struct{}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rq := &request{id: forwarded.RequestID(), start: time.Now()}
	cw := &countingWriter{ResponseWriter: w}
	var bytesIn atomic.Int64
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &countingBody{ReadCloser: r.Body, n: &bytesIn}
	}
	if p.o.Observer != nil {
		p.o.Observer.RequestStarted()
	}
	var span trace.Span
	if p.o.Tracer != nil {
		var ctx context.Context
		ctx, span = p.startSpan(r)
		rq.traceID = span.SpanContext().TraceID().String()
		r = r.WithContext(ctx)
	}
	defer func() {
		code := cw.status
		if code == 0 {
			code = 499 // the client went away before an answer (Envoy logs 0, DC)
		}
		if span != nil {
			endSpan(span, rq, code)
		}
		ex := exchange{proto: r.Proto, method: r.Method, path: requestPath(r), authority: r.Host,
			peer: r.RemoteAddr, values: r.Header.Values}
		if p.o.AccessLog != nil {
			ex.userAgent = r.UserAgent() // only the log line says it
		}
		p.finish(r.Context(), rq, &ex, code, bytesIn.Load(), cw.n)
	}()
	p.serve(cw, r, rq)
}

// exchange is what the log says of a request, whichever path served it.
type exchange struct {
	proto, method, path, authority, userAgent, peer string
	// values are the request's values of a field.
	values func(name string) []string
}

// finish accounts for a served request: metrics, the access log line,
// Istio's metrics. code 499 is a client that left before an answer.
func (p *Proxy) finish(ctx context.Context, rq *request, ex *exchange, code int, in, out int64) {
	if code == 0 {
		code = 499
	}
	end := rq.end
	if end.IsZero() {
		end = time.Now()
	}
	d := end.Sub(rq.start)
	if p.o.Observer != nil {
		p.o.Observer.RequestDone(rq.dec.Env, code, d, in, out)
	}
	// An HTTP/2 stream the client reset early is counted against its
	// connection and told in the connection's summary line (the edge
	// listener's Rapid Reset rule), as the gRPC front does, so a reset
	// flood cannot flood the log.
	premature := ex.proto == "HTTP/2.0" && rq.flags == "DC" && d < prematureReset
	if p.o.AccessLog != nil && !premature {
		p.logRequest(ctx, ex, rq, code, in, out)
	}
	if p.o.Exchanges != nil {
		if rq.flags == "DC" {
			code = 0 // Envoy records no status for a request whose client left
		}
		p.o.Exchanges.Exchange(istiometrics.Exchange{
			Service: rq.dec.Destination.Host(), Code: code, GRPCStatus: -1, Flags: rq.responseFlags(),
			Env: rq.dec.Env, Retries: rq.retries, Duration: d,
			RequestBytes: in, ResponseBytes: out,
		})
	}
}

// Limiter bounds the requests in flight: Acquire takes a place or says why
// there is none, Release gives it back.
type Limiter interface {
	Acquire() error
	Release()
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, rq *request) {
	if l := p.o.Limiter; l != nil {
		if err := l.Acquire(); err != nil {
			rq.flags = "OM"
			localReply(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		defer l.Release()
	}
	req := route.Request{Headers: lowerHeaders(r.Header), Path: requestPath(r), Authority: r.Host, Method: r.Method}
	dec, err := p.routes().Decide(&req, p.pick())
	if status, flags, msg := refusal(dec, err, nil); status != 0 {
		rq.flags = flags
		localReply(w, status, msg)
		return
	}
	rq.dec = dec
	a := dec.Action()
	switch {
	case a.DirectResponse != nil:
		p.directResponse(w, a)
		return
	case a.Redirect != nil:
		redirect(w, r, a.Redirect)
		return
	}
	if a.Rewrite != nil && a.Rewrite.URI != "" {
		rq.prefix = matchedPrefix(dec.Rule, &req)
	}
	ep, err := p.ups.Endpoint(dec.Destination)
	if err != nil && dec.Fallback(p.o.Fallback) {
		ep, err = p.ups.Endpoint(dec.Destination)
	}
	if status, flags, msg := refusal(dec, nil, err); status != 0 {
		rq.flags = flags
		localReply(w, status, msg)
		return
	}
	rq.ep = ep
	if a.Retries.Attempts > 0 && !isUpgrade(r) {
		if err := rq.keepBody(r); err != nil {
			localReply(w, http.StatusBadRequest, "envgate: reading the request body: "+err.Error())
			return
		}
	}
	if p.direct(r, ep) {
		p.serveDirect(w, r, rq)
		return
	}
	ctx := context.WithValue(r.Context(), requestKey{}, rq)
	if a.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, a.Timeout, errRouteTimeout)
		defer cancel()
	}
	p.rp.ServeHTTP(w, r.WithContext(ctx))
}

var errRouteTimeout = errors.New("route timeout")

func (p *Proxy) pick() float64 {
	if p.o.Pick == nil {
		return 0
	}
	return p.o.Pick()
}

// keepBody reads a small request body whole so a retry can send it again.
func (rq *request) keepBody(r *http.Request) error {
	if r.Body == nil || r.Body == http.NoBody {
		rq.canRetry = true
		return nil
	}
	if r.ContentLength < 0 || r.ContentLength > maxReplayBytes {
		return nil // streamed, not retried
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxReplayBytes+1))
	if err != nil {
		return err
	}
	if len(b) > maxReplayBytes {
		return fmt.Errorf("the body is longer than its Content-Length")
	}
	rq.body, rq.canRetry = b, true
	r.Body = io.NopCloser(bytes.NewReader(b))
	return nil
}

// rewrite makes the upstream request: Envoy's edge header handling
// (conn_manager_utility.cc mutateRequestHeaders: x-forwarded-for appended,
// x-forwarded-proto, x-envoy-external-address, a new x-request-id;
// cleanInternalHeaders: the client's x-envoy-* removed), the route's
// rewrite and header operations. ReverseProxy has already removed the
// hop-by-hop headers.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	rq := pr.In.Context().Value(requestKey{}).(*request)
	a := rq.dec.Action()
	out := pr.Out
	out.URL.Scheme, out.URL.Host = "http", rq.ep.Addr
	out.Host = pr.In.Host
	for k := range out.Header {
		if strings.HasPrefix(strings.ToLower(k), "x-envoy-") {
			delete(out.Header, k)
		}
	}
	ip := pr.In.RemoteAddr
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	xff := ip
	if prior := pr.In.Header.Values("X-Forwarded-For"); len(prior) > 0 {
		xff = forwarded.For(prior, ip)
	}
	h := out.Header
	if p.o.Propagator != nil {
		p.injectSpan(pr.In.Context(), h)
	}
	h.Set("X-Forwarded-For", xff)
	rq.xff = xff
	h.Set("X-Envoy-External-Address", ip)
	proto := "http"
	if pr.In.TLS != nil {
		proto = "https"
	}
	h.Set("X-Forwarded-Proto", proto)
	h.Set("X-Request-Id", rq.id)
	if rw := a.Rewrite; rw != nil {
		if rw.URI != "" {
			path := rewritePath(requestPath(pr.In), rq.prefix, rw.URI)
			u, err := out.URL.Parse(path)
			if err == nil {
				out.URL.Path, out.URL.RawPath, out.URL.RawQuery = u.Path, u.RawPath, u.RawQuery
			}
		}
		if rw.Authority != "" {
			out.Host = rw.Authority
		}
	}
	applyHeaderOps(h, a.RequestHeaders)
}

// applyHeaderOps changes h as Istio's header operations do: remove, then
// set (replace), then add (append).
func applyHeaderOps(h http.Header, ops route.HeaderOps) {
	for _, k := range ops.Remove {
		h.Del(k)
	}
	for k, v := range ops.Set {
		h.Set(k, v)
	}
	for k, v := range ops.Add {
		h.Add(k, v)
	}
}

// modifyResponse applies the route's response header operations and adds
// envgate's own headers.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	rq := resp.Request.Context().Value(requestKey{}).(*request)
	applyHeaderOps(resp.Header, rq.dec.Action().ResponseHeaders)
	served := rq.dec.Env
	if rq.dec.Baseline != "" {
		served = rq.dec.Baseline
		resp.Header.Set(BaselineHeader, rq.dec.Baseline)
	}
	if p.o.DebugHeader {
		resp.Header.Set(UpstreamHeader, served+" "+rq.ep.Addr)
	}
	return nil
}

// upstreamError answers a request whose upstream gave no response, as
// Envoy does: 504 "upstream request timeout" when the route's timeout
// expired (router.cc Filter::onUpstreamTimeout, UT), 503 "upstream connect
// error or disconnect/reset before headers" otherwise (Filter::
// onUpstreamReset: UF for a connection failure, UR for a reset), each
// with the cause. A client that went away gets nothing (DC).
func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	rq := r.Context().Value(requestKey{}).(*request)
	timedOut := errors.Is(context.Cause(r.Context()), errRouteTimeout)
	if code, msg := upstreamFailure(rq, err, timedOut, r.Context().Err() != nil); code != 0 {
		localReply(w, code, msg)
	}
}

// upstreamFailure is Envoy's answer to a request whose upstream gave no
// response (see upstreamError), every path's: the status and text, with
// rq's flag set; status 0 for a client that left, which gets nothing.
func upstreamFailure(rq *request, err error, timedOut, gone bool) (int, string) {
	switch {
	case timedOut:
		rq.flags = "UT"
		return http.StatusGatewayTimeout, fmt.Sprintf("upstream request timeout: the route's timeout of %v expired (%s)", rq.dec.Action().Timeout, rq.dec.Rule.Source)
	case gone:
		rq.flags = "DC"
		return 0, ""
	case isConnectFailure(err):
		rq.flags = "UF"
		return http.StatusServiceUnavailable, fmt.Sprintf("upstream connect error or disconnect/reset before headers. reset reason: connection failure: %v (%s)", err, rq.ep.Addr)
	case errors.Is(err, errProtocol):
		rq.flags = "UPE"
		return http.StatusBadGateway, fmt.Sprintf("upstream connect error or disconnect/reset before headers. reset reason: %v (%s)", err, rq.ep.Addr)
	default:
		rq.flags = "UR"
		return http.StatusServiceUnavailable, fmt.Sprintf("upstream connect error or disconnect/reset before headers. reset reason: %v (%s)", err, rq.ep.Addr)
	}
}

// localReply is an answer of the gateway itself: Envoy's status and text,
// then why.
func localReply(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}

func (p *Proxy) directResponse(w http.ResponseWriter, a *route.Action) {
	d := a.DirectResponse
	if d.Body != "" {
		w.Header().Set("Content-Type", "text/plain")
	}
	applyHeaderOps(w.Header(), a.ResponseHeaders)
	w.WriteHeader(d.Status)
	_, _ = io.WriteString(w, d.Body)
}

// transport is the upstream client for ep.
func (p *Proxy) transport(ep Endpoint) *http.Transport {
	k := transportKey{ep.Protocol, ep.TLSKey}
	p.mu.Lock()
	defer p.mu.Unlock()
	if t, ok := p.transports[k]; ok {
		return t
	}
	t := &http.Transport{
		DialContext:            p.o.Dial,
		TLSClientConfig:        ep.TLS,
		MaxIdleConnsPerHost:    p.o.MaxIdleConnsPerHost,
		IdleConnTimeout:        p.o.IdleConnTimeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: int64(p.o.MaxResponseHeaderBytes),
		// The client's encoding passes through untouched.
		DisableCompression: true,
		Protocols:          new(http.Protocols),
	}
	switch {
	case ep.Protocol == HTTP1:
		t.Protocols.SetHTTP1(true)
	case ep.TLS != nil:
		t.Protocols.SetHTTP2(true)
	default:
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	p.transports[k] = t
	return t
}

// Close closes the idle upstream connections.
func (p *Proxy) Close() {
	p.pool.close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.transports {
		t.CloseIdleConnections()
	}
}

// retrier is the ReverseProxy's transport: each try on an endpoint picked
// for it, retried as the route says.
type retrier Proxy

func (t *retrier) RoundTrip(req *http.Request) (*http.Response, error) {
	p := (*Proxy)(t)
	rq := req.Context().Value(requestKey{}).(*request)
	perTry := rq.dec.Action().Retries.PerTryTimeout
	var resp *http.Response
	first := true
	err := p.retry(rq, time.Time{}, func() bool { return req.Context().Err() != nil }, func() tryResult {
		if !first && rq.body != nil {
			req.Body = io.NopCloser(bytes.NewReader(rq.body))
		}
		first = false
		req.URL.Host = rq.ep.Addr
		req.URL.Scheme = "http"
		if rq.ep.TLS != nil {
			req.URL.Scheme = "https"
		}
		var err error
		var expired bool
		resp, err, expired = p.try(req, perTry)
		if resp == nil {
			return tryResult{err: err, perTry: expired}
		}
		return tryResult{code: resp.StatusCode, grpc: grpcStatus(resp)}
	}, func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		resp = nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// try sends one attempt. A per-try timeout bounds the wait for the
// response's headers, as Envoy's does for a request already sent.
func (p *Proxy) try(req *http.Request, perTry time.Duration) (*http.Response, error, bool) {
	rq := req.Context().Value(requestKey{}).(*request)
	t := p.transport(rq.ep)
	if perTry <= 0 {
		resp, err := t.RoundTrip(req)
		return resp, err, false
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	timer := time.AfterFunc(perTry, func() { cancel(errPerTryTimeout) })
	resp, err := t.RoundTrip(req.WithContext(ctx))
	if !timer.Stop() && context.Cause(ctx) == errPerTryTimeout {
		if resp != nil {
			resp.Body.Close()
		}
		return nil, err, true
	}
	if resp != nil {
		resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: func() { cancel(nil) }}
	} else {
		cancel(nil)
	}
	return resp, err, false
}

var errPerTryTimeout = errors.New("per-try timeout")

// cancelOnClose ends a try's context with its response body.
type cancelOnClose struct {
	io.ReadCloser
	cancel func()
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// isUpgrade reports whether r asks to switch protocols (WebSocket).
func isUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && httpHeaderHasToken(r.Header, "Connection", "upgrade")
}

func httpHeaderHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// lowerHeaders are r's headers as the routing table reads them: lower-case
// names, as HTTP/2 and gRPC metadata carry them.
func lowerHeaders(h http.Header) map[string][]string {
	out := make(map[string][]string, len(h))
	for k, v := range h {
		out[strings.ToLower(k)] = v
	}
	return out
}

// requestPath is the request's :path: its target with the query.
func requestPath(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}

// countingWriter records the status and the body bytes written. Unwrap
// lets ReverseProxy reach the connection's Flusher and Hijacker.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body bytes read.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// bufferPool lends ReverseProxy its 32 KiB copy buffers.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

// slogWriter sends ReverseProxy's own log lines to the gateway's log.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(b []byte) (int, error) {
	w.log.Debug("http proxy", "message", route.Truncate(strings.TrimSpace(string(b)), 512))
	return len(b), nil
}

// traceIDOr is the gateway's span's trace id, or without tracing the one
// the request carries.
func (rq *request) traceIDOr(get func(string) string) string {
	if rq.traceID != "" {
		return rq.traceID
	}
	return forwarded.TraceID(get)
}

// responseFlags are Envoy's response flags of the request, "" for none;
// several are joined as Envoy joins them ("UF,URX").
func (rq *request) responseFlags() string {
	switch {
	case rq.urx && rq.flags == "":
		return "URX"
	case rq.urx && rq.flags != "DC":
		return rq.flags + ",URX"
	}
	return rq.flags
}

// maxLogValue bounds what a log line repeats of a client's value.
const maxLogValue = 64

func (p *Proxy) logRequest(ctx context.Context, ex *exchange, rq *request, code int, in, out int64) {
	flags := rq.responseFlags()
	if flags == "" {
		flags = "-" // as Envoy writes none
	}
	xff := rq.xff
	if xff == "" {
		xff = strings.Join(ex.values("X-Forwarded-For"), ",")
	}
	get := func(name string) string {
		if v := ex.values(name); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	attrs := []slog.Attr{
		slog.String("protocol", ex.proto),
		slog.String("method", route.Truncate(ex.method, 16)),
		slog.String("path", route.Truncate(ex.path, 4*maxLogValue)),
		slog.String("authority", route.Truncate(ex.authority, maxLogValue)),
		slog.String("user_agent", route.Truncate(ex.userAgent, 2*maxLogValue)),
		slog.String("x_forwarded_for", route.Truncate(xff, 4*maxLogValue)),
		slog.String("env", route.Truncate(strings.Join(ex.values(p.o.EnvHeader), ","), maxLogValue)),
		slog.String("destination_service", rq.dec.Destination.Host()),
		slog.String("upstream", rq.ep.Addr),
		slog.Int("status", code),
		slog.String("response_flags", flags),
		slog.Float64("duration_ms", float64(time.Since(rq.start).Microseconds())/1000),
		slog.Int64("bytes_in", in),
		slog.Int64("bytes_out", out),
		slog.Int("retries", rq.retries),
		slog.String("request_id", rq.id),
		slog.String("trace_id", rq.traceIDOr(get)),
		slog.String("peer", ex.peer),
	}
	if rq.dec.Baseline != "" {
		attrs = append(attrs, slog.String("baseline", rq.dec.Baseline))
	}
	p.o.AccessLog.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
}
