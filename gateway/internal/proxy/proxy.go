// Package proxy forwards any gRPC call, of any service and method, unary or
// streaming, to the upstream its director picks, without parsing messages.
//
// It keeps mwitkow/grpc-proxy's contract (a StreamDirector returns the
// outgoing context and connection; the two directions are pumped separately;
// trailers are copied at the end) but not its handler, which re-encodes every
// message through emptypb and drops the upstream's headers when the call ends
// before its first message (grpc-proxy issue #79). Here headers are forwarded
// as soon as the upstream sends them, a trailers-only answer stays
// trailers-only, and message bytes travel in the buffers they arrived in.
package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	grpcproxy "github.com/mwitkow/grpc-proxy/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/envgate/envgate/gateway/internal/forwarded"
	"github.com/envgate/envgate/gateway/internal/h2client"
	"github.com/envgate/envgate/gateway/internal/istiometrics"
	"github.com/envgate/envgate/gateway/internal/route"
)

// Proxy is the handler of every call the gateway does not serve itself.
type Proxy struct {
	director grpcproxy.StreamDirector
	log      *slog.Logger // access log: one line per call
	// envHeader is logged with each call.
	envHeader string
	observer  Observer
	exchanges Exchanges // nil: none
	// tracer and prop trace calls (SetTracing); nil: off.
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	// debugHeader adds x-envgate-upstream to every response.
	debugHeader bool
	// maxMessage bounds a response inflated for a client that does not
	// accept the upstream's encoding.
	maxMessage int
	admission  Admission
	limiter    Limiter      // never nil: noLimit without a bound
	codecs     sync.Map     // content-subtype -> grpc.CallOption forcing its codec
	nCodecs    atomic.Int32 // entries in codecs, at most maxCodecs
}

// maxCodecs bounds the content subtypes whose codec option is kept: the
// subtype is whatever a client writes after application/grpc+, so past
// this many the option is made per call instead.
const maxCodecs = 16

// prematureReset is how young a stream the client resets counts as reset
// early: Envoy's premature_reset_min_stream_lifetime_seconds default.
const prematureReset = time.Second

// connAccount is what the listener's remote address offers when the
// gateway tracks its client connections (edge.Addr): early resets, and the
// message bytes each call takes from and gives to the connection, from
// which the overload manager tells what the connection holds.
type connAccount interface {
	CallStarted()
	StreamEnded(premature bool)
	Received(n int)
	Reserve(ctx context.Context, n int) error
	Adjust(delta int)
}

// Admission decides whether a new call is taken (the overload manager):
// nil, or why not.
type Admission interface {
	Admit() error
}

// SetAdmission makes every call ask a first (nil: every call is taken).
func (p *Proxy) SetAdmission(a Admission) { p.admission = a }

// Limiter bounds the calls in flight: Acquire takes a place or says why
// there is none, Release gives it back.
type Limiter interface {
	Acquire() error
	Release()
}

// SetLimiter makes every call take a place from l first (nil: no bound).
func (p *Proxy) SetLimiter(l Limiter) { p.limiter = l }

// Response headers envgate adds.
const (
	// UpstreamHeader names the environment and endpoint that served the
	// call, with Options.DebugHeader.
	UpstreamHeader = "x-envgate-upstream"
	// BaselineHeader names the baseline environment that served a call
	// whose own environment has no service.
	BaselineHeader = "x-envgate-baseline"
)

// SetMaxMessage sets the message size limit (default 4 MiB).
func (p *Proxy) SetMaxMessage(n int) { p.maxMessage = n }

// SetDebugHeader turns the x-envgate-upstream response header on.
func (p *Proxy) SetDebugHeader(on bool) { p.debugHeader = on }

// Observer is told of every call, for metrics. env is the environment the
// call was routed to, empty when it was not routed.
type Observer interface {
	CallStarted()
	CallDone(env, method string, code codes.Code, d time.Duration, bytesIn, bytesOut int64)
}

// Exchanges receives the account of each finished call: Istio's metrics
// and envgate's retry count are kept from it.
type Exchanges interface {
	Exchange(istiometrics.Exchange)
}

// SetExchanges has every finished call reported to x.
func (p *Proxy) SetExchanges(x Exchanges) { p.exchanges = x }

// New returns a proxy that forwards each call where director says, logs
// every call on accessLog (nil: no access log) and reports it to observer
// (nil: none).
func New(director grpcproxy.StreamDirector, accessLog *slog.Logger, envHeader string, observer Observer) *Proxy {
	return &Proxy{director: director, log: accessLog, envHeader: envHeader, observer: observer, maxMessage: 4 << 20}
}

// ServerCodec is the codec the gateway's grpc.Server must force, so that
// unknown methods receive frames and its own services still speak protobuf.
func ServerCodec() encoding.CodecV2 { return newCodec("proto") }

var streamDesc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

var errRouteTimeout = errors.New("route timeout")

// routeTimedOut reports whether the call failed because the route's timeout
// expired: either our timer fired, or the upstream, which was given the
// same deadline, hit it first and answered DEADLINE_EXCEEDED.
func routeTimedOut(upCtx context.Context, err error, c *call, started time.Time) bool {
	if c.action == nil || c.action.Timeout <= 0 {
		return false
	}
	if context.Cause(upCtx) == errRouteTimeout {
		return true
	}
	return status.Code(err) == codes.DeadlineExceeded && time.Since(started) >= c.action.Timeout-10*time.Millisecond
}

// halfCloseWait bounds how long a failed attempt waits to learn whether the
// client's request is complete before giving up on a retry.
const halfCloseWait = 250 * time.Millisecond

// Handler is the grpc.UnknownServiceHandler.
func (p *Proxy) Handler(_ any, ss grpc.ServerStream) error {
	start := time.Now()
	ctx := ss.Context()
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "envgate: no method in the server stream")
	}
	if p.observer != nil {
		p.observer.CallStarted()
	}
	c := &call{}
	if pr, ok := peer.FromContext(ctx); ok {
		if c.acct, _ = pr.Addr.(connAccount); c.acct != nil {
			c.acct.CallStarted()
		}
	}
	var span trace.Span
	if p.tracer != nil {
		ctx, span = p.startSpan(ctx, method)
		ctx = withAfterFunc(ctx, ss.Context())
		c.traceID = span.SpanContext().TraceID().String()
	}
	var err error
	if ctx.Err() != nil {
		// Reset before its handler ran (Rapid Reset sends HEADERS and
		// RST_STREAM together): nothing to route or dial.
		err = status.FromContextError(ctx.Err()).Err()
	} else if err = p.admit(); err != nil {
		// Overloaded: refused before anything is read or dialled.
		c.flags = "OM"
	} else if err = p.acquire(); err != nil {
		c.flags = "OM"
	} else {
		err = p.forward(ctx, ss, method, c)
		if p.limiter != nil {
			p.limiter.Release()
		}
	}
	d := time.Since(start)
	if span != nil {
		endSpan(span, c, err)
	}
	if p.observer != nil {
		p.observer.CallDone(c.env, method, status.Code(err), d, c.bytesIn.Load(), c.bytesOut)
	}
	if p.exchanges != nil {
		p.exchanges.Exchange(istiometrics.Exchange{
			GRPC: true, Service: c.dest, Code: localReplyStatus(c.flags), GRPCStatus: int(status.Code(err)),
			Flags: c.flags, Env: c.env, Retries: c.retries, Duration: d,
			RequestBytes: c.bytesIn.Load(), ResponseBytes: c.bytesOut,
			RequestMessages: c.msgsIn.Load(), ResponseMessages: c.msgsOut,
		})
	}
	// A stream the client reset early is counted against its connection,
	// and logged in the connection's summary rather than a line each, so
	// a reset flood cannot flood the log.
	premature := errors.Is(ctx.Err(), context.Canceled) && d < prematureReset
	if c.acct != nil {
		c.acct.StreamEnded(premature)
	}
	if p.log != nil && !premature {
		p.logCall(ctx, method, start, c, err)
	}
	return err
}

// unreserve corrects what f reserved of the client connection's outbound
// allowance to size, the bytes actually given to the connection.
func (p *Proxy) unreserve(f *frame, c *call, size int) {
	if c.acct != nil && f.reserved != size {
		c.acct.Adjust(size - f.reserved)
	}
	f.reserved = 0
}

// admit asks the admission control, if any.
func (p *Proxy) admit() error {
	if p.admission == nil {
		return nil
	}
	if err := p.admission.Admit(); err != nil {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return nil
}

// acquire takes a place from the limiter, if any.
func (p *Proxy) acquire() error {
	if p.limiter == nil {
		return nil
	}
	if err := p.limiter.Acquire(); err != nil {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return nil
}

// call is what one call leaves for the access log and metrics.
type call struct {
	acct      connAccount   // the client connection's, when it keeps one
	requestID string        // x-request-id, made for every routed call as Envoy does at the edge
	env       string        // the routed environment, from the director's decision
	action    *route.Action // the route's action, from the decision
	baseline  string        // the baseline environment that took the call
	dest      string        // the destination service's host, for the log
	route     string        // the rule that matched ("namespace/name http[i]")
	authority string        // the request's :authority, for the log
	traceID   string        // the gateway's span's trace, when tracing
	flags     string        // Envoy's response flags, for the log ("" for none)
	upstream  string
	// The client-to-upstream pump may still run when the call is logged
	// (it can be blocked reading a client that has not half-closed), so its
	// counters are atomic.
	bytesIn, msgsIn   atomic.Int64
	bytesOut, msgsOut int64
	headersSent       bool
	retries           int
	reqComp           string // the request's grpc-encoding
	// md is the request metadata for the upstream, from the director.
	md metadata.MD
}

// upstreamStream is what the proxy learns from an upstream stream beyond
// grpc.ClientStream, when it offers it: the endpoint it went to, and the
// compression of its responses, so the client gets them compressed the
// same way.
type upstreamStream interface {
	Addr() string
	RecvCompress() string
}

// holdIfReady has the server stream hold its next send when the upstream
// already has what follows (a message, or the end), so that both go to
// the client in one write: a unary answer's headers, message and trailers
// in one system call instead of three. Only streams that can (grpcfront's)
// and upstreams that tell (h2client's) do; gRPC's own server batches
// through its writer goroutine instead.
func holdIfReady(ss grpc.ServerStream, cs grpc.ClientStream) {
	h, ok := ss.(holder)
	if !ok {
		return
	}
	if r, ok := cs.(readier); ok && r.Ready() {
		h.Hold()
	}
}

// holder is a server stream that can hold its next send for the one after
// it (grpcfront's).
type holder interface{ Hold() }

// readier is an upstream stream that tells whether its next message or
// end is already in (h2client's).
type readier interface{ Ready() bool }

// sendCompressor is a server stream (grpcfront's) that sends the frames
// marked compressed as they are, in the encoding set by name; gRPC's own
// takes grpc.SetSendCompressor, and such frames behind the pass-through
// marker (compress.go).
type sendCompressor interface {
	PassCompressed(name string) error
}

// transportStream is the part of gRPC's server transport stream that tells
// how the request was encoded; it is not in gRPC's public interfaces, so the
// proxy asks for it and forwards compression only when it is there.
type transportStream interface {
	RecvCompress() string
	ContentSubtype() string
}

func (p *Proxy) forward(ctx context.Context, ss grpc.ServerStream, method string, c *call) (err error) {
	outCtx, conn, err := p.director(ctx, method)
	if err != nil {
		var de *decidedError
		if errors.As(err, &de) {
			c.env, c.flags, c.baseline, c.dest = de.dec.Env, de.flag, de.dec.Baseline, de.dec.Destination.Host()
		}
		return err
	}
	// The decision comes with the connection (Routed): a director that
	// returns a plain connection (grpc-proxy's) routes with no action.
	if r, ok := conn.(*Routed); ok {
		conn = r.ClientConnInterface
		c.env, c.action, c.baseline = r.Decision.Env, r.Decision.Action(), r.Decision.Baseline
		c.dest = r.Decision.Destination.Host()
		c.route = r.Decision.Rule.Source
		if p.prop != nil && r.MD != nil {
			p.injectSpan(ctx, r.MD)
		}
		c.md, c.requestID = r.MD, r.RequestID
	}
	// The upstream call ends as soon as this handler returns, whichever side
	// stopped first, or when the route's timeout expires.
	started := time.Now()
	_, aborting := conn.(abortingConn)
	if aborting && c.md != nil {
		// h2client takes the metadata from the call option below, so its
		// calls need not be made from the director's outgoing context.
		outCtx = ctx
	} else {
		outCtx = withAfterFunc(outCtx, ctx)
	}
	u := &upstreamCall{ss: ss, conn: conn, method: method, c: c, upCtx: outCtx}
	switch {
	case c.action != nil && c.action.Timeout > 0:
		u.upCtx, u.cancel = context.WithTimeoutCause(outCtx, c.action.Timeout, errRouteTimeout)
	case !aborting:
		u.upCtx, u.cancel = context.WithCancel(outCtx)
	}
	// Without a context of its own (h2client's streams: the common case)
	// the call's streams are ended by abort; a cancelable context per
	// call, registered with the call's and watched by each stream, was
	// 4 allocations and 2-3% of the gateway's CPU per call (alternating
	// runs, docs/bench.md run Y).
	upCtx := u.upCtx
	defer u.abort()
	opts := u.optBuf[:0]
	subtype := ""
	if ts, ok := grpc.ServerTransportStreamFromContext(ctx).(transportStream); ok {
		subtype = ts.ContentSubtype()
		if comp := ts.RecvCompress(); comp != "" && comp != "identity" {
			c.reqComp = comp
			opts = append(opts, grpc.UseCompressor(comp))
		}
	}
	opts = append(opts, p.codecFor(subtype))
	authority := ""
	var a []string
	if r, ok := grpc.ServerTransportStreamFromContext(ctx).(rawMetadata); ok && r.IncomingMetadata() != nil {
		a = r.IncomingMetadata()[":authority"] // grpcfront's own: no copy (ValueFromIncomingContext's was an allocation a call)
	} else {
		a = metadata.ValueFromIncomingContext(ctx, ":authority")
	}
	if len(a) == 1 {
		authority = a[0]
	}
	c.authority = authority
	if c.md != nil {
		u.req = h2client.Request{MD: c.md, Authority: authority}
		opts = append(opts, &u.req)
	} else if authority != "" {
		opts = append(opts, grpc.CallAuthority(authority))
	}
	u.opts = opts
	if c.action != nil {
		u.retries = c.action.Retries
	}
	defer u.rp.free()
	// Envoy's response flags of a failed call, for the access log
	// (source/common/stream_info/utility.cc ResponseFlagUtils).
	// Several are joined with commas, as Envoy writes "UF,URX".
	defer func() {
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			c.flags = "DC" // the client went away
			return
		}
		switch {
		case c.flags != "":
		case errors.Is(err, errPerTryTimeout):
			c.flags = "UT"
		case u.connectFailed:
			c.flags = "UF"
		}
		if u.retries.Attempts > 0 && c.retries >= u.retries.Attempts && retryable(u.retries, err, errors.Is(err, errPerTryTimeout)) {
			c.flags = joinFlags(c.flags, "URX") // the retries are spent
		}
	}()
	var endRetry func() // the outstanding retry, held through its attempt
	defer func() {
		if endRetry != nil {
			endRetry()
		}
	}()
	for attempt := 0; ; attempt++ {
		err := p.attempt(u, attempt)
		if endRetry != nil {
			endRetry()
			endRetry = nil
		}
		if err == nil {
			return nil
		}
		if ctx.Err() == nil && routeTimedOut(upCtx, err, c, started) {
			// Envoy answers an expired route timeout with 504, which gRPC
			// clients see as UNAVAILABLE.
			c.flags = "UT"
			return status.Errorf(codes.Unavailable, "upstream request timeout: the route's timeout of %v expired", c.action.Timeout)
		}
		// If the client's side failed first (it went away or sent garbage),
		// that is the call's error rather than the upstream's reaction to
		// the abort that followed it. The pump records it before aborting,
		// so an attempt ended by that abort always finds it here.
		if e := u.clientErr(); e != nil {
			return e
		}
		// A retry needs nothing sent to the client yet, the whole request
		// kept, and a condition the route retries on.
		if attempt >= u.retries.Attempts || ctx.Err() != nil || upCtx.Err() != nil || u.aborted() ||
			c.headersSent || c.msgsOut > 0 || !retryable(u.retries, err, errors.Is(err, errPerTryTimeout)) {
			return err
		}
		if u.pumping {
			// Whether the request is complete is known once the client
			// half-closes; a unary request's end follows its message at
			// once, while a stream that stays open must not hold the
			// failure back for long.
			t := time.NewTimer(halfCloseWait)
			select {
			case <-u.pumpDone:
				t.Stop()
				u.pumping = false
				if e := u.clientErr(); e != nil {
					return e
				}
			case <-t.C:
				return err
			}
		}
		if !u.rp.complete() {
			return err
		}
		// The destination's retry budget (Envoy's max_retries circuit
		// breaker, a DestinationRule's connectionPool.http.maxRetries): when
		// it is spent the attempt's error stands.
		if b, ok := u.conn.(retryBudget); ok {
			release, ok := b.AcquireRetry()
			if !ok {
				return err
			}
			endRetry = release
		}
		// Envoy's default back-off between tries.
		t := time.NewTimer(route.RetryBackoff(attempt))
		select {
		case <-t.C:
		case <-upCtx.Done():
			t.Stop()
			return err
		case <-u.abortedChan():
			t.Stop()
			return err
		}
		c.retries++
	}
}

// localReplyStatus is the HTTP status Envoy records for a gRPC call with
// these response flags: its local reply's status (router.cc and
// the connection manager answer NR 404, UT 504, the others 503), 0 when
// the client went away first, 200 when the upstream answered, retried or
// not (the gRPC status travels in the trailers).
func localReplyStatus(flags string) int {
	first, _, _ := strings.Cut(flags, ",")
	switch first {
	case "", "URX": // URX alone: the upstream's own answer, passed on
		return 200
	case "NR":
		return 404
	case "UT":
		return 504
	case "DC":
		return 0
	}
	return 503
}

// joinFlags adds flag to Envoy's comma-separated response flags.
func joinFlags(flags, flag string) string {
	if flags == "" {
		return flag
	}
	return flags + "," + flag
}

// retryBudget is an upstream that bounds the retries outstanding to it.
type retryBudget interface {
	AcquireRetry() (release func(), ok bool)
}

// upstreamCall is one call's upstream side, across its attempts.
type upstreamCall struct {
	ss     grpc.ServerStream
	conn   grpc.ClientConnInterface
	method string
	opts   []grpc.CallOption
	optBuf [3]grpc.CallOption
	req    h2client.Request // the request metadata, for upstreams that take it so
	c      *call
	upCtx  context.Context
	cancel context.CancelFunc // ends every attempt, when upCtx is the call's own (else nil: abort ends them)
	// abortMu guards abortCh, abortErr and current: the pump (a goroutine
	// of its own for a request still coming) aborts while attempts start.
	// Not held across a stream's Abort.
	abortMu  sync.Mutex
	abortCh  chan struct{} // closedChan once aborted; made before that only for a retry's back-off
	abortErr error         // the client side's failure that aborted the call, set with abortCh
	current  aborter       // the latest attempt's stream, when upCtx is not the call's own
	retries  route.Retries
	rp       replay // part of the call's allocation
	// pumpDone is closed once the client-to-upstream pump has ended
	// (its failure is then clientErr's); pumping is true until that was
	// waited for. A pump run before the answer is read (requestIn) has
	// ended at once: pumpDone is then closedChan, and no channel is made.
	pumpDone <-chan struct{}
	pumping  bool
	// connectFailed is true when the latest attempt could open no stream,
	// for the response flags.
	connectFailed bool
}

// attempt sends the call upstream once. The first attempt starts the
// client-to-upstream pump; later ones replay what it kept.
func (p *Proxy) attempt(u *upstreamCall, n int) error {
	actx, acancel := attemptContext(u.upCtx, u.retries)
	defer acancel()
	cs, err := u.conn.NewStream(actx, streamDesc, u.method, u.opts...)
	u.connectFailed = err != nil
	if err != nil {
		if context.Cause(actx) == errPerTryTimeout {
			return perTryTimedOut(u.retries.PerTryTimeout)
		}
		return err
	}
	if u.cancel == nil {
		u.track(cs)
	}
	us, _ := cs.(upstreamStream)
	if us != nil {
		u.c.upstream = us.Addr()
	}
	if n == 0 {
		// Client to upstream runs beside; upstream to client runs here,
		// and its end is the end of the call. A request that is all in
		// already, and small, is sent first instead: nothing of it waits
		// for the client, and what it sends fits the window every HTTP/2
		// stream starts with, so nothing waits for the upstream either
		// (most unary calls; a goroutine each was 3% of the gateway's CPU).
		u.pumping = true
		keep := &u.rp
		if u.retries.Attempts == 0 {
			keep = nil
		}
		pump := func() {
			if err := pumpToUpstream(u.ss, cs, u.c, keep); err != nil {
				// The client's side broke (it went away, or sent a message
				// over the limit): end the upstream call too, or it would
				// wait for the rest of a request that never comes.
				u.abortFor(err)
			}
		}
		if requestIn(u.ss) {
			pump()
			u.pumpDone = closedChan
		} else {
			done := make(chan struct{})
			u.pumpDone = done
			go func() {
				defer close(done)
				pump()
			}()
		}
	} else if err := u.rp.sendAll(cs); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	// io.EOF from a send means the upstream already ended the stream (it
	// refused it, say): its status comes from the receive side below, as
	// on the first attempt.
	err = p.pumpToClient(cs, us, u.ss, u.c, &u.rp)
	if err != nil && context.Cause(actx) == errPerTryTimeout {
		return perTryTimedOut(u.retries.PerTryTimeout)
	}
	return err
}

// afterFuncer is a context that runs a function once it ends, as
// context.AfterFunc does, at less cost: grpcfront's call context over its
// stream's (h2front's).
type afterFuncer interface {
	AfterFunc(func()) (stop func() bool)
}

// valuesOver is a context that adds values to a call's context (a span,
// the director's outgoing metadata) with the call's AfterFunc on it.
type valuesOver struct {
	context.Context
	call afterFuncer
}

func (v *valuesOver) AfterFunc(f func()) (stop func() bool) { return v.call.AfterFunc(f) }

// withAfterFunc is ctx, made from the call's context call by adding
// values, with call's AfterFunc: a value context hides the method, and
// what is derived from ctx (the upstream call's timeouts) or watches it
// (the upstream stream) would find neither it nor a cancelCtx under a call
// that has none, and context.propagateCancel would start a goroutine for
// each. Done and Err are ctx's, which are call's.
func withAfterFunc(ctx, call context.Context) context.Context {
	a, ok := call.(afterFuncer)
	if !ok || ctx == call {
		return ctx
	}
	return &valuesOver{Context: ctx, call: a}
}

// aborter is an upstream stream its caller can end (h2client's).
type aborter interface{ Abort() }

// abortingConn is an upstream connection whose streams are aborters
// (the method marks it).
type abortingConn interface{ StreamsAbort() }

// abort ends the call's upstream side: the attempt in flight, and any
// that would follow.
func (u *upstreamCall) abort() { u.abortFor(nil) }

// abortFor is abort for the client side's failure err, which the call's
// attempts then report instead of what the abort made of them.
func (u *upstreamCall) abortFor(err error) {
	u.abortMu.Lock()
	if u.abortErr == nil {
		u.abortErr = err
	}
	s := u.current
	if u.abortCh != nil && u.abortCh != closedChan {
		close(u.abortCh)
	}
	u.abortCh = closedChan
	u.abortMu.Unlock()
	if u.cancel != nil {
		u.cancel()
	} else if s != nil {
		s.Abort()
	}
}

// clientErr is the client side's failure that aborted the call, if one did.
func (u *upstreamCall) clientErr() error {
	u.abortMu.Lock()
	defer u.abortMu.Unlock()
	return u.abortErr
}

func (u *upstreamCall) aborted() bool {
	u.abortMu.Lock()
	defer u.abortMu.Unlock()
	return u.abortCh == closedChan
}

// abortedChan is closed once the call is aborted.
func (u *upstreamCall) abortedChan() <-chan struct{} {
	u.abortMu.Lock()
	defer u.abortMu.Unlock()
	if u.abortCh == nil {
		u.abortCh = make(chan struct{})
	}
	return u.abortCh
}

// track makes cs the stream abort ends, ending it at once if the call was
// aborted already.
func (u *upstreamCall) track(cs grpc.ClientStream) {
	a, _ := cs.(aborter)
	u.abortMu.Lock()
	u.current = a
	done := u.abortCh == closedChan
	u.abortMu.Unlock()
	if done && a != nil {
		a.Abort()
	}
}

// closedChan is a pump's pumpDone when it ran to its end before the
// answer was read.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// inlineRequest is the most a request sent before its answer is read
// (requestIn) may hold: well within HTTP/2's initial stream window
// (65,535 bytes, RFC 9113 section 6.9.2), which an upstream's SETTINGS
// can lower but gRPC's servers do not.
const inlineRequest = 16 << 10

// requestIn reports whether the client sent the whole request, half-close
// included, and it is small (inlineRequest): a server stream that can tell
// (grpcfront's) says so.
func requestIn(ss grpc.ServerStream) bool {
	b, ok := ss.(bufferedRequest)
	if !ok {
		return false
	}
	n, ended := b.RequestBuffered()
	return ended && n <= inlineRequest
}

// bufferedRequest is a server stream that tells what of the request is in
// (grpcfront's).
type bufferedRequest interface{ RequestBuffered() (int, bool) }

// perTryTimeoutError is an attempt that ran out of its per-try timeout:
// UNAVAILABLE to the client (Envoy answers 504), errPerTryTimeout to the
// retry decision.
type perTryTimeoutError struct{ d time.Duration }

func (e perTryTimeoutError) Error() string { return e.GRPCStatus().Err().Error() }
func (e perTryTimeoutError) GRPCStatus() *status.Status {
	return status.Newf(codes.Unavailable, "upstream per-try timeout of %v expired", e.d)
}
func (e perTryTimeoutError) Is(target error) bool { return target == errPerTryTimeout }

func perTryTimedOut(d time.Duration) error { return perTryTimeoutError{d} }

// pumpToUpstream copies the client's messages to the upstream, then
// half-closes. On a client-side failure it returns the error to report.
func pumpToUpstream(ss grpc.ServerStream, cs grpc.ClientStream, c *call, keep *replay) error {
	var f frame // reused: SendMsg takes its buffers and leaves it empty
	upstreamDone := false
	for {
		if err := ss.RecvMsg(&f); err != nil {
			if errors.Is(err, io.EOF) {
				if keep != nil {
					keep.markClosed()
				}
				_ = cs.CloseSend()
				return nil
			}
			return err
		}
		n := int64(f.data.Len())
		if keep != nil {
			keep.keep(f.data)
		}
		if upstreamDone {
			f.free()
			if c.acct != nil {
				c.acct.Received(int(n) + 5)
			}
			continue
		}
		if err := cs.SendMsg(&f); err != nil {
			// The upstream ended the call; its status arrives on the other
			// pump. With retries the rest of the request is still read and
			// kept, so another attempt can send all of it.
			f.free()
			if c.acct != nil {
				c.acct.Received(int(n) + 5)
			}
			if keep == nil {
				return nil
			}
			upstreamDone = true
			continue
		}
		// Counted out of the connection once forwarded: a message
		// waiting for a slow upstream still counts as held.
		if c.acct != nil {
			c.acct.Received(int(n) + 5)
		}
		c.bytesIn.Add(n)
		c.msgsIn.Add(1)
	}
}

// pumpToClient forwards the upstream's headers, messages and trailers, and
// returns the upstream's status as the call's error.
func (p *Proxy) pumpToClient(cs grpc.ClientStream, us upstreamStream, ss grpc.ServerStream, c *call, rp *replay) error {
	// The encoding the server sends messages in: by default the request's
	// (gzip is the only one registered), else what the upstream used.
	sendComp, upComp := "", ""
	wire := false // the server stream sends compressed frames by their flag
	if c.reqComp == "gzip" {
		sendComp = "gzip"
	}
	// Header blocks until the upstream sends headers, answers trailers-only, or
	// fails; nil headers mean there were none, and the answer stays
	// trailers-only.
	if hdr, _ := cs.Header(); hdr != nil {
		if c.action != nil {
			applyHeaderOps(hdr, c.action.ResponseHeaders)
		}
		p.addOwnHeaders(hdr, c)
		if us != nil {
			upComp = us.RecvCompress()
			if upComp == "identity" {
				upComp = ""
			}
			// The response goes in the upstream's encoding, compressed
			// messages as they came (no encoding: as the upstream sent
			// them, not compressed by the gateway). It fails only when the
			// client does not accept that encoding: those are inflated
			// below.
			if upComp != sendComp {
				name := upComp
				if name == "" {
					name = "identity"
				}
				if sc, ok := grpc.ServerTransportStreamFromContext(ss.Context()).(sendCompressor); ok {
					if sc.PassCompressed(name) == nil {
						sendComp, wire = upComp, true
					}
				} else if grpc.SetSendCompressor(ss.Context(), name) == nil {
					sendComp = upComp
				}
			}
		}
		holdIfReady(ss, cs)
		if err := ss.SendHeader(hdr); err != nil {
			return err
		}
		c.headersSent = true
		rp.drop() // answered: no retry any more
	}
	var err error
	var f frame
	// Response bytes count against the client connection's outbound cap
	// until written. Message by message, one larger than the upstream
	// stream's window is let in only once the connection holds less than
	// the cap; forwarded as bytes, a message goes on in pieces of the
	// window. Either way a client that does not read holds back its
	// upstream (through flow control, and gRPC's per-stream write quota
	// for smaller messages) rather than filling the gateway.
	f.acct, f.ctx = c.acct, ss.Context()
	var sendErr error
	ws, sendsWire := ss.(wireSender)
	fw, forwards := cs.(forwarder)
	if sendsWire && forwards && sendComp == upComp {
		err, sendErr = p.relayWire(fw, ws, ss, cs, c, sendComp != "")
	} else {
		err, sendErr = p.relayMessages(cs, ss, &f, c, sendComp, upComp, wire)
	}
	if sendErr != nil {
		return sendErr
	}
	tr := cs.Trailer()
	if !c.headersSent {
		// A trailers-only answer carries the response headers in its
		// trailers.
		if tr == nil {
			tr = metadata.MD{}
		}
		if c.action != nil {
			applyHeaderOps(tr, c.action.ResponseHeaders)
		}
		p.addOwnHeaders(tr, c)
	}
	if len(tr) > 0 {
		// The status details travel in the returned status; forwarding the
		// header as well would send it twice.
		delete(tr, "grpc-status-details-bin")
		ss.SetTrailer(tr)
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// relayMessages forwards the upstream's response messages one at a time:
// compressed ones as they came when the client gets the upstream's
// encoding (sendComp == upComp; wire: the server stream sends them by
// their flag, else behind the pass-through marker), inflated otherwise.
// It returns what ended the upstream's response (io.EOF at its end), or
// the error that ended the sending.
func (p *Proxy) relayMessages(cs grpc.ClientStream, ss grpc.ServerStream, f *frame, c *call, sendComp, upComp string, wire bool) (recvErr, sendErr error) {
	for {
		if err := cs.RecvMsg(f); err != nil {
			p.unreserve(f, c, 0)
			return err, nil
		}
		n := int64(f.data.Len())
		if f.compressed {
			if sendComp == upComp {
				f.mark = !wire // passes through compressed
			} else if err := p.inflate(f, upComp); err != nil {
				p.unreserve(f, c, 0)
				return nil, err
			}
		}
		p.unreserve(f, c, f.data.Len()+5)
		holdIfReady(ss, cs)
		if err := ss.SendMsg(f); err != nil {
			f.free()
			return nil, err
		}
		c.bytesOut += n
		c.msgsOut++
	}
}

// forwarder is an upstream stream (h2client's) that hands over the
// response's bytes as they came (Forward).
type forwarder interface {
	Forward()
	RecvForwarded(*h2client.Forwarded) error
}

// wireSender is a server stream (grpcfront's) that sends bytes of the
// response's messages as they are on the wire.
type wireSender interface {
	SendWire(parts [][]byte) error
}

// relayWire forwards the upstream's response bytes as they came to a
// server stream that takes them so: all that are in at once, in one write,
// where relayMessages copies, hands over and writes each message on its
// own (a 1 KiB stream's messages arrive a dozen at a time). The
// response's encoding is the upstream's (encoded: there is one), so
// nothing is inflated. It returns what ended the upstream's response
// (io.EOF at its end), or the send's error.
func (p *Proxy) relayWire(fw forwarder, ws wireSender, ss grpc.ServerStream, cs grpc.ClientStream, c *call, encoded bool) (recvErr, sendErr error) {
	var in h2client.Forwarded
	fw.Forward()
	for {
		if err := fw.RecvForwarded(&in); err != nil {
			return err, nil
		}
		if in.Compressed && !encoded {
			in.Free()
			return nil, status.Error(codes.Internal, "envgate: the upstream sent a compressed message on a call with no encoding")
		}
		size := 0
		for _, b := range in.Data {
			size += len(b)
		}
		if c.acct != nil {
			c.acct.Adjust(size) // the connection's until written; nothing was reserved
		}
		holdIfReady(ss, cs)
		sendErr = ws.SendWire(in.Data)
		msgs, payload := in.Messages, in.Payload
		in.Free()
		if sendErr != nil {
			return nil, sendErr
		}
		c.bytesOut += int64(payload)
		c.msgsOut += int64(msgs)
	}
}

// inflate decompresses a response message for a client that does not
// accept the upstream's encoding, bounded by the message limit.
func (p *Proxy) inflate(f *frame, name string) error {
	out, err := h2client.Decompress(name, f.data, p.maxMessage)
	f.data = nil // freed by Decompress
	if err != nil {
		return err
	}
	f.data, f.compressed = out, false
	return nil
}

// addOwnHeaders adds the response headers envgate itself sets.
func (p *Proxy) addOwnHeaders(md metadata.MD, c *call) {
	served := c.env
	if c.baseline != "" {
		served = c.baseline
		md[BaselineHeader] = []string{c.baseline}
	}
	if p.debugHeader {
		md[UpstreamHeader] = []string{served + " " + c.upstream}
	}
}

// codecFor returns the call option forcing a pass-through codec named after
// the request's content subtype, so application/grpc+json reaches the
// upstream as it came. Options are made once per subtype: they are
// interface values, and making one per call would allocate.
func (p *Proxy) codecFor(subtype string) grpc.CallOption {
	if subtype == "" || subtype == "proto" {
		return protoFrames
	}
	if c, ok := p.codecs.Load(subtype); ok {
		return c.(grpc.CallOption)
	}
	opt := grpc.ForceCodecV2(newCodec(subtype))
	if p.nCodecs.Add(1) > maxCodecs {
		p.nCodecs.Add(-1)
		return opt
	}
	c, loaded := p.codecs.LoadOrStore(subtype, opt)
	if loaded {
		p.nCodecs.Add(-1)
	}
	return c.(grpc.CallOption)
}

var protoFrames grpc.CallOption = grpc.ForceCodecV2(newCodec("proto"))

// traceIDOr is the gateway's span's trace id, or without tracing the one
// the request carries.
func (c *call) traceIDOr(get func(string) string) string {
	if c.traceID != "" {
		return c.traceID
	}
	return forwarded.TraceID(get)
}

// requestIDOf is the call's x-request-id; a call the director refused was
// sent nowhere, and gets one for its log line.
func requestIDOf(c *call) string {
	if c.requestID == "" {
		return forwarded.RequestID()
	}
	return c.requestID
}

// maxLogValue bounds what a log line repeats of a client's or upstream's
// value (the env header; 4x for the method, 8x for a status message).
const maxLogValue = 64

func (p *Proxy) logCall(ctx context.Context, method string, start time.Time, c *call, err error) {
	code := status.Code(err)
	// A routed call's request metadata is at hand (the director's copy,
	// lower-case keys): read it directly. Only a refused call looks in the
	// incoming metadata, whose lookup of an absent key scans every key.
	first := func(name string) string {
		if c.md != nil {
			if v := c.md[name]; len(v) > 0 {
				return v[0]
			}
			return ""
		}
		if v := metadata.ValueFromIncomingContext(ctx, name); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	authority := c.authority
	if authority == "" && c.md == nil {
		authority = first(":authority")
	}
	xff := first("x-forwarded-for") // a routed call's: as sent upstream, the client's address appended
	flags := c.flags
	if flags == "" {
		flags = "-" // as Envoy writes none
	}
	attrs := []slog.Attr{
		slog.String("env", route.Truncate(strings.Join(metadata.ValueFromIncomingContext(ctx, p.envHeader), ","), maxLogValue)),
		slog.String("method", route.Truncate(method, 4*maxLogValue)),
		slog.String("authority", route.Truncate(authority, maxLogValue)),
		slog.String("user_agent", route.Truncate(first("user-agent"), 2*maxLogValue)),
		slog.String("x_forwarded_for", route.Truncate(xff, 4*maxLogValue)),
		slog.String("destination_service", c.dest),
		slog.String("upstream", c.upstream),
		slog.String("code", code.String()),
		slog.String("response_flags", flags),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
		slog.Int64("bytes_in", c.bytesIn.Load()),
		slog.Int64("bytes_out", c.bytesOut),
		slog.Int64("msgs_in", c.msgsIn.Load()),
		slog.Int64("msgs_out", c.msgsOut),
		slog.Int("retries", c.retries),
		slog.String("request_id", requestIDOf(c)),
		slog.String("trace_id", c.traceIDOr(first)),
	}
	if c.baseline != "" {
		attrs = append(attrs, slog.String("baseline", c.baseline))
	}
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		attrs = append(attrs, slog.String("peer", pr.Addr.String()))
	}
	if err != nil {
		attrs = append(attrs, slog.String("message", route.Truncate(status.Convert(err).Message(), 8*maxLogValue)))
	}
	p.log.LogAttrs(ctx, slog.LevelInfo, "call", attrs...)
}
