// Package h2client is a gRPC client transport over HTTP/2 for a proxy: it
// implements grpc.ClientConnInterface over the endpoints of a destination,
// one connection each (more when the endpoint's concurrent stream limit is
// reached), balancing each call over the ready endpoints (least request by
// default) and ejecting those that keep failing (outlier.go).
//
// gRPC's own client does the same with more machinery than a proxy uses
// (a writer goroutine per connection fed through a control buffer, stream
// bookkeeping for retries, stats, interceptors); on a proxy's upstream side
// that machinery is most of the CPU a call costs. Here writers write their
// frames themselves, the last one in flushes, and one reader per connection
// hands frames to streams. Messages are carried as the codec gives them,
// with gRPC's buffer pool.
//
// What it does: streams both ways with per-stream and per-connection flow
// control (a message larger than the window is let in whole, once its
// Reserver made room), the upstream's concurrent stream limit (further
// connections, a bounded wait), keepalive PINGs while calls are in flight,
// grpc-timeout from the context's
// deadline, RST_STREAM when the context ends, binary metadata, per-message
// compression both ways, trailers-only answers, non-gRPC answers mapped to
// statuses as the gRPC spec says, GOAWAY (streams the upstream did not take
// fail with UNAVAILABLE, the connection drains and is replaced), and
// reconnection with backoff. It speaks plaintext HTTP/2 (h2c) only: the
// gateway's upstreams are in-cluster services.
package h2client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Options configure a Client.
type Options struct {
	// Dial opens a connection to an endpoint; nil uses a net.Dialer.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// MaxRequests bounds the calls in flight to all endpoints together
	// (Istio's connectionPool.http.http2MaxRequests, Envoy's max_requests
	// circuit breaker): a call over it fails at once with UNAVAILABLE, as
	// Envoy answers 503 overflow, and is not retried. 0: no limit.
	MaxRequests int
	// MaxRequestsPerConnection drains a connection after that many calls
	// (Envoy's max_requests_per_connection); 0: no limit.
	MaxRequestsPerConnection int
	// MaxRetries bounds the retries outstanding to all endpoints together
	// (Envoy's max_retries circuit breaker; see AcquireRetry). 0: no limit.
	MaxRetries int
	// TLS, when set, secures every connection (within ConnectTimeout);
	// nil is h2c. A backend that negotiates an ALPN protocol other than h2
	// is refused. The configuration is read at each handshake, never
	// changed.
	TLS *tls.Config
	// UserAgent is sent when the call's metadata carries none.
	UserAgent string
	// MaxRecvMsgSize and MaxSendMsgSize bound messages; 0 means 4 MiB
	// received and unlimited sent, as in gRPC.
	MaxRecvMsgSize, MaxSendMsgSize int
	// ConnectTimeout bounds a dial and its HTTP/2 handshake; 0 means 20 s.
	ConnectTimeout time.Duration
	// WriteTimeout fails a connection whose upstream takes no bytes for
	// this long (it stopped reading); 0 means 10 s.
	WriteTimeout time.Duration
	// KeepaliveTime is how long a connection with calls in flight may go
	// without a frame from the upstream before it is sent a PING;
	// KeepaliveTimeout is how long the PING may go unanswered before the
	// connection is failed. 0 means 5 minutes and 20 s; a negative
	// KeepaliveTime turns the PINGs off. Five minutes is the shortest
	// interval gRPC servers accept by default (grpc-go's keepalive
	// enforcement MinTime): pinging more often makes them close the
	// connection with "too_many_pings".
	KeepaliveTime, KeepaliveTimeout time.Duration
	// MaxConnsPerEndpoint bounds the connections to one endpoint. A second
	// one is opened only when every open one is at the upstream's
	// SETTINGS_MAX_CONCURRENT_STREAMS, as Envoy's HTTP/2 pool does; 0
	// means 16.
	MaxConnsPerEndpoint int
	// StreamWait bounds how long a call waits for a free stream when every
	// connection is at the upstream's stream limit and no more may be
	// opened; 0 means 5 s. At most maxPending calls wait at once; more
	// fail at once.
	StreamWait time.Duration
	// Balancer picks an endpoint per call; the zero value is least
	// request, Istio's default.
	Balancer Balancer
	// Outlier is the passive health check; the zero value is the default
	// (DefaultOutlier).
	Outlier Outlier
	// OnEject, when set, is called at each ejection (for the metrics).
	OnEject func()
	// OnDial, when set, is told of every TCP connection attempt's result
	// (for the metrics).
	OnDial func(error)
	// OnRead, when set, is told the bytes of every read from an upstream,
	// by the connection's reader: the gateway's overload manager takes a
	// reading after every few MiB, so a burst of responses is seen while
	// it arrives, as a burst of requests is (edge.Limiter.OnRead).
	OnRead func(n int)
	Log    *slog.Logger
}

// Client sends calls to a set of endpoints of one destination.
type Client struct {
	authority string
	opts      Options
	ctx       context.Context
	stop      context.CancelFunc
	wg        sync.WaitGroup // endpoint managers, extra dials, connection goroutines

	ready    atomic.Pointer[[]*endpoint] // endpoints that take calls, by address
	next     atomic.Uint32
	waiting  atomic.Int32  // calls waiting for a free stream
	requests atomic.Int32  // calls on a stream, for MaxRequests
	opened   atomic.Uint64 // streams ever opened, for Activity
	retries  atomic.Int32  // retries outstanding, for MaxRetries

	// mu guards what follows and each endpoint's fields marked so. It is
	// taken before a connection's locks (open may run under it), never
	// while holding them.
	mu      sync.Mutex
	eps     map[string]*endpoint
	conns   map[*conn]struct{} // every open connection, draining ones too
	changed chan struct{}      // made by waiters, closed when an endpoint changes state or a stream frees up
	closed  bool
	// lastPrompt is when a call last cut an endpoint's back-off short.
	lastPrompt time.Time
}

// promptEvery rate-limits the prompt attempts calls may ask for while every
// endpoint fails; extraRetry is how long an endpoint whose extra connection
// failed is not asked for another.
const (
	promptEvery = time.Second
	extraRetry  = time.Second
	maxPending  = 1024 // Envoy's default max_pending_requests
)

type endpoint struct {
	addr   string
	ctx    context.Context // ends when the endpoint leaves the set
	cancel context.CancelFunc
	// retryNow cuts the back-off short: one prompt attempt when a call
	// finds every endpoint failing.
	retryNow chan struct{}

	active atomic.Int32            // calls in flight, for least request
	conns  atomic.Pointer[[]*conn] // ready connections, the managed one first; written under Client.mu
	health health                  // passive health counters

	// Under Client.mu.
	err         error // last dial error while no connection is ready
	dialing     bool  // an extra connection is being dialled
	extraFailed time.Time
	ejection    ejection
}

func (ep *endpoint) ready() []*conn { return *ep.conns.Load() }

// acceptEncoding lists the compressors this process can decode.
var acceptEncoding = func() string {
	var names []string
	for _, n := range []string{"gzip", "zstd", "snappy", "deflate"} {
		if encoding.GetCompressor(n) != nil {
			names = append(names, n)
		}
	}
	return strings.Join(names, ",")
}()

// New returns a client for the destination named authority (the default
// :authority of its calls), with no endpoints yet.
func New(authority string, opts Options) *Client {
	if opts.Dial == nil {
		var d net.Dialer
		opts.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	if dial, onDial := opts.Dial, opts.OnDial; onDial != nil {
		opts.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := dial(ctx, addr)
			onDial(err)
			return c, err
		}
	}
	if opts.MaxRecvMsgSize <= 0 {
		opts.MaxRecvMsgSize = 4 << 20
	}
	if opts.MaxSendMsgSize <= 0 {
		opts.MaxSendMsgSize = 1<<31 - 1
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 20 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	if opts.KeepaliveTime == 0 {
		opts.KeepaliveTime = 5 * time.Minute
	}
	if opts.KeepaliveTimeout <= 0 {
		opts.KeepaliveTimeout = 20 * time.Second
	}
	if opts.MaxConnsPerEndpoint <= 0 {
		opts.MaxConnsPerEndpoint = 16
	}
	if opts.StreamWait <= 0 {
		opts.StreamWait = 5 * time.Second
	}
	opts.Outlier = opts.Outlier.withDefaults()
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	ctx, stop := context.WithCancel(context.Background())
	cl := &Client{authority: authority, opts: opts, ctx: ctx, stop: stop,
		eps: map[string]*endpoint{}, conns: map[*conn]struct{}{}}
	cl.ready.Store(&[]*endpoint{})
	return cl
}

// Update sets the endpoints. New ones are connected at once; removed ones
// take no new calls and their connections close when their calls end.
func (cl *Client) Update(addrs []string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.closed {
		return
	}
	keep := make(map[string]bool, len(addrs))
	for _, addr := range addrs {
		keep[addr] = true
	}
	for addr, ep := range cl.eps {
		if !keep[addr] {
			ep.cancel()
			ep.ejection.stop()
			delete(cl.eps, addr)
		}
	}
	for addr := range keep {
		if _, ok := cl.eps[addr]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(cl.ctx)
		ep := &endpoint{addr: addr, ctx: ctx, cancel: cancel, retryNow: make(chan struct{}, 1)}
		ep.conns.Store(&[]*conn{})
		cl.eps[addr] = ep
		cl.wg.Go(func() { cl.manage(ep) })
	}
	cl.changedLocked()
}

// Done is closed once the client is closed.
func (cl *Client) Done() <-chan struct{} { return cl.ctx.Done() }

// Close ends every connection at once and waits for the client's
// goroutines.
func (cl *Client) Close() error {
	cl.mu.Lock()
	cl.closed = true
	var conns []*conn
	for c := range cl.conns {
		conns = append(conns, c)
	}
	for _, ep := range cl.eps {
		ep.ejection.stop()
	}
	cl.eps = map[string]*endpoint{}
	cl.changedLocked()
	cl.mu.Unlock()
	cl.stop()
	for _, c := range conns {
		c.close()
	}
	cl.wg.Wait()
	return nil
}

// manage keeps one ready connection to ep while it is in the set: it
// dials, backs off after failures as gRPC does (1 s growing 1.6 times to
// 120 s, jittered), and replaces a connection that went away at once.
func (cl *Client) manage(ep *endpoint) {
	failures := 0
	for {
		c, err := cl.connect(ep)
		if err == nil {
			cl.setState(ep, nil)
			if !cl.hold(ep, c) {
				return
			}
			if c.served() {
				failures = 0
				continue
			}
			// An upstream that accepts and hangs up (or sends GOAWAY)
			// before answering a call is a failing one: redialled after
			// the back-off, not in a loop.
			err = errNotServed
		}
		if ep.ctx.Err() != nil {
			return
		}
		cl.opts.Log.Debug("upstream connection failed", "addr", ep.addr, "err", err)
		cl.setState(ep, err)
		if !cl.wait(ep, backoff(failures)) {
			return
		}
		failures++
	}
}

var errNotServed = errors.New("the upstream ended the connection before serving a call")

// hold offers c for calls until it goes away (true) or ep leaves the set
// (false: c drains, its calls in flight finish).
func (cl *Client) hold(ep *endpoint, c *conn) bool {
	cl.mu.Lock()
	cl.setConnsLocked(ep, append(slices.Clone(ep.ready()), c))
	cl.mu.Unlock()
	defer func() {
		cl.mu.Lock()
		cl.setConnsLocked(ep, slices.DeleteFunc(slices.Clone(ep.ready()), func(x *conn) bool { return x == c }))
		cl.mu.Unlock()
	}()
	select {
	case <-c.gone:
		return true
	case <-ep.ctx.Done():
		// Left the set (Update already took it out of the ready ones) or
		// the client closed (Close ends the connection).
		c.drain()
		return false
	}
}

// extra opens one more connection to ep, asked for by calls that found
// every connection at the upstream's stream limit, and offers it until it
// goes away; it is not replaced.
func (cl *Client) extra(ep *endpoint) {
	c, err := cl.connect(ep)
	cl.mu.Lock()
	ep.dialing = false
	if err != nil {
		ep.extraFailed = time.Now()
		cl.changedLocked() // the waiting calls learn it
		cl.mu.Unlock()
		cl.opts.Log.Debug("extra upstream connection failed", "addr", ep.addr, "err", err)
		return
	}
	cl.mu.Unlock()
	cl.hold(ep, c)
}

// wantConnLocked starts an extra connection to ep unless one is being
// dialled, the last failed under extraRetry ago, or ep has its maximum.
func (cl *Client) wantConnLocked(ep *endpoint) {
	if ep.dialing || len(ep.ready()) >= cl.opts.MaxConnsPerEndpoint || time.Since(ep.extraFailed) < extraRetry ||
		ep.ctx.Err() != nil || cl.eps[ep.addr] != ep {
		return
	}
	ep.dialing = true
	cl.wg.Go(func() { cl.extra(ep) })
}

// connect dials ep and starts the connection's goroutines.
func (cl *Client) connect(ep *endpoint) (*conn, error) {
	ctx, cancel := context.WithTimeout(ep.ctx, cl.opts.ConnectTimeout)
	c, err := dial(ctx, ep.addr, cl.opts.Dial, connOptions{
		writeTimeout: cl.opts.WriteTimeout, tls: cl.opts.TLS, maxRequests: cl.opts.MaxRequestsPerConnection, onRead: cl.opts.OnRead,
		keepalive: cl.opts.KeepaliveTime, keepaliveTimeout: cl.opts.KeepaliveTimeout,
	})
	cancel()
	if err != nil {
		return nil, err
	}
	c.ep, c.cl = ep, cl
	c.onRoom = cl.roomFreed
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.closed {
		c.nc.Close()
		return nil, errors.New("client closed")
	}
	cl.conns[c] = struct{}{}
	c.start(&cl.wg, func() {
		cl.mu.Lock()
		delete(cl.conns, c)
		cl.mu.Unlock()
	})
	return c, nil
}

// roomFreed wakes the calls waiting for a free stream, if any.
func (cl *Client) roomFreed() {
	if cl.waiting.Load() == 0 {
		return
	}
	cl.mu.Lock()
	cl.wakeLocked()
	cl.mu.Unlock()
}

// wait sleeps for the back-off d, cut short when a call asks for a prompt
// attempt (every endpoint failing); false once ep left the set.
func (cl *Client) wait(ep *endpoint, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ep.retryNow:
	case <-ep.ctx.Done():
		return false
	}
	return true
}

func backoff(failures int) time.Duration {
	d := float64(time.Second)
	for range failures {
		if d *= 1.6; d > float64(120*time.Second) {
			d = float64(120 * time.Second)
			break
		}
	}
	return time.Duration(d * (0.8 + 0.4*rand.Float64()))
}

// setState records ep's last dial error (nil: connected, or connecting
// again) and republishes the ready set.
func (cl *Client) setState(ep *endpoint, err error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	ep.err = err
	cl.changedLocked()
}

func (cl *Client) setConnsLocked(ep *endpoint, conns []*conn) {
	ep.conns.Store(&conns)
	cl.changedLocked()
}

// changedLocked republishes the endpoints that take calls (a connection
// ready, not ejected) and wakes the waiting calls. When no endpoint that
// is not ejected is ready or still connecting, the ejected ones with a
// connection take calls, as Envoy routes to every host once too few are
// healthy (its panic threshold). One still connecting is a healthy host to
// Envoy, which sends the call there and waits for the connection; here
// the calls wait for it (open), not go to an ejected endpoint meanwhile.
func (cl *Client) changedLocked() {
	var ready, ejected []*endpoint
	connecting := false
	for _, ep := range cl.eps {
		switch {
		case ep.ejection.active:
			if len(ep.ready()) > 0 {
				ejected = append(ejected, ep)
			}
		case len(ep.ready()) > 0:
			ready = append(ready, ep)
		case ep.err == nil:
			connecting = true
		}
	}
	if len(ready) == 0 && !connecting {
		ready = ejected
	}
	slices.SortFunc(ready, func(a, b *endpoint) int { return strings.Compare(a.addr, b.addr) })
	cl.ready.Store(&ready)
	cl.wakeLocked()
}

func (cl *Client) wakeLocked() {
	if cl.changed != nil {
		close(cl.changed)
		cl.changed = nil
	}
}

// open starts s on a connection of an endpoint the balancer picks. With
// none ready it waits while an endpoint is still connecting, and fails
// with UNAVAILABLE once every endpoint failed to connect, as gRPC's round
// robin does for calls that do not wait for ready. When every connection
// is at the upstream's stream limit it asks for another connection and
// waits for a free stream, at most StreamWait.
func (cl *Client) open(ctx context.Context, s *stream) error {
	// As Envoy's circuit breaker: the check and the count are not one step,
	// so calls opened at the same instant may pass the limit by a few.
	if max := cl.opts.MaxRequests; max > 0 && int(cl.requests.Load()) >= max {
		return withFailure(status.Newf(codes.Unavailable, "envgate: upstream overflow: %d calls in flight to %s reach the DestinationRule's connectionPool.http.http2MaxRequests", max, cl.authority), Overflow)
	}
	var streamWait <-chan time.Time
	prompted := false
	for {
		eps := *cl.ready.Load()
		if len(eps) > 0 {
			if cl.pick(eps).open(s) == nil {
				return nil
			}
		}
		cl.mu.Lock()
		// Again under the lock the ready set is published under, or a
		// change between the two would never wake this call.
		full := false
		for _, ep := range *cl.ready.Load() {
			switch err := ep.open(s); err {
			case nil:
				cl.mu.Unlock()
				return nil
			case errFull:
				full = true
				cl.wantConnLocked(ep)
			}
		}
		if cl.closed {
			cl.mu.Unlock()
			return status.Error(codes.Unavailable, "envgate: upstream client closed")
		}
		if full {
			if cl.waiting.Load() >= maxPending {
				cl.mu.Unlock()
				return withFailure(status.Newf(codes.Unavailable, "envgate: upstream overflow: %d calls already wait for a free stream to %s", maxPending, cl.authority), Overflow)
			}
			if streamWait == nil {
				t := time.NewTimer(cl.opts.StreamWait)
				defer t.Stop()
				streamWait = t.C
			}
		} else if err := cl.unreadyLocked(&prompted); err != nil {
			cl.mu.Unlock()
			return err
		}
		if cl.changed == nil {
			cl.changed = make(chan struct{})
		}
		ch := cl.changed
		cl.waiting.Add(1)
		cl.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			cl.waiting.Add(-1)
			return status.FromContextError(ctx.Err()).Err()
		case <-streamWait:
			cl.waiting.Add(-1)
			return withFailure(status.Newf(codes.Unavailable, "envgate: no free stream to %s in %v: every connection is at the upstream's concurrent stream limit (SETTINGS_MAX_CONCURRENT_STREAMS) and no more may be opened (%d per endpoint)",
				cl.authority, cl.opts.StreamWait, cl.opts.MaxConnsPerEndpoint), Overflow)
		}
		cl.waiting.Add(-1)
	}
}

// unreadyLocked decides for a call that found no endpoint ready: nil to
// wait (an endpoint is connecting, or was prompted to), or the error to
// fail with.
func (cl *Client) unreadyLocked(prompted *bool) error {
	var errs []error
	connecting := false
	for _, ep := range cl.eps {
		if ep.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ep.addr, ep.err))
		} else {
			connecting = true
		}
	}
	if !connecting && !*prompted {
		// Every endpoint is in back-off (an outage, or a restart the
		// back-off has not noticed yet): one of them is tried now rather
		// than failing for the rest of the back-off.
		*prompted = true
		connecting = cl.promptLocked()
	}
	switch {
	case connecting:
		return nil
	case len(errs) == 0:
		return status.Error(codes.Unavailable, "no healthy upstream")
	}
	return withFailure(status.Newf(codes.Unavailable, "no healthy upstream: connecting failed: %v", errors.Join(errs...)), ConnectFailure)
}

// promptLocked cuts one endpoint's back-off short, at most once every
// promptEvery per client, and reports whether it did.
func (cl *Client) promptLocked() bool {
	if time.Since(cl.lastPrompt) < promptEvery {
		return false
	}
	for _, ep := range cl.eps { // any one
		cl.lastPrompt = time.Now()
		ep.err = nil // connecting again: calls wait for it
		select {
		case ep.retryNow <- struct{}{}:
		default:
		}
		return true
	}
	return false
}

// open starts s on one of ep's connections, the first with a free stream:
// errFull when every one is at its limit, errUnusable when none takes
// streams.
func (ep *endpoint) open(s *stream) error {
	full := false
	for _, c := range ep.ready() {
		switch err := c.open(s); err {
		case nil:
			return nil
		case errFull:
			full = true
		}
	}
	if full {
		return errFull
	}
	return errUnusable
}

// Activity is how many streams the client ever opened and how many are
// open now, for an owner that closes idle clients.
func (cl *Client) Activity() (opened uint64, inFlight int) {
	return cl.opened.Load(), int(cl.requests.Load())
}

// AcquireRetry asks for a retry of a failed call: ok false when
// MaxRetries retries are already outstanding (Envoy's max_retries circuit
// breaker), and then the call is not retried. release ends the retry, once
// its attempt is over.
func (cl *Client) AcquireRetry() (release func(), ok bool) {
	max := cl.opts.MaxRetries
	if max <= 0 {
		return func() {}, true
	}
	if int(cl.retries.Add(1)) > max {
		cl.retries.Add(-1)
		return nil, false
	}
	return func() { cl.retries.Add(-1) }, true
}

// StreamsAbort marks a Client as one whose streams can be ended by their
// caller (Abort) without their context being canceled.
func (cl *Client) StreamsAbort() {}

// NewStream starts a call on a picked endpoint. It understands the call
// options a proxy passes: ForceCodecV2, UseCompressor, CallAuthority,
// CallContentSubtype and the message size limits.
func (cl *Client) NewStream(ctx context.Context, _ *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	s := &stream{
		ctx: ctx, method: method, authority: cl.authority,
		maxRecv: cl.opts.MaxRecvMsgSize, maxSend: cl.opts.MaxSendMsgSize,
		recv:  recvWindow{left: streamWindow},
		hdrCh: make(chan struct{}), wake: make(chan struct{}, 1),
	}
	subtype := ""
	var peerOut *peer.Peer
	mdSet := false
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.ForceCodecV2CallOption:
			s.codec = o.CodecV2
			if subtype == "" {
				subtype = o.CodecV2.Name()
			}
		case grpc.ContentSubtypeCallOption:
			subtype = strings.ToLower(o.ContentSubtype)
		case grpc.CompressorCallOption:
			s.compName = o.CompressorType
		case grpc.AuthorityOverrideCallOption:
			s.authority = o.Authority
		case grpc.MaxRecvMsgSizeCallOption:
			s.maxRecv = o.MaxRecvMsgSize
		case grpc.MaxSendMsgSizeCallOption:
			s.maxSend = o.MaxSendMsgSize
		case grpc.PeerCallOption:
			peerOut = o.PeerAddr
		case *Request:
			s.md, mdSet = o.MD, true
			if o.Authority != "" {
				s.authority = o.Authority
			}
		}
	}
	if s.codec == nil {
		if s.codec = encoding.GetCodecV2(subtype); s.codec == nil {
			s.codec = encoding.GetCodecV2(proto.Name)
		}
	}
	s.contentType = contentTypes[subtype]
	if s.contentType == "" {
		s.contentType = "application/grpc+" + subtype
	}
	if s.compName == "identity" {
		s.compName = ""
	}
	if s.compName != "" {
		if s.comp = encoding.GetCompressor(s.compName); s.comp == nil {
			return nil, status.Errorf(codes.Internal, "grpc: Compressor is not installed for requested grpc-encoding %q", s.compName)
		}
	}
	if !mdSet {
		s.md, _ = metadata.FromOutgoingContext(ctx)
	}
	s.userAgent = cl.opts.UserAgent
	if ua := s.md["user-agent"]; len(ua) > 0 {
		s.userAgent = ua[0]
	}
	if err := cl.open(ctx, s); err != nil {
		return nil, err
	}
	if peerOut != nil {
		*peerOut = peer.Peer{Addr: s.c.nc.RemoteAddr(), LocalAddr: s.c.nc.LocalAddr()}
	}
	if stop := watch(ctx, s.cancel); stop != nil {
		s.mu.Lock()
		if s.finished {
			s.mu.Unlock()
			stop()
		} else {
			s.stopWatch = stop
			s.mu.Unlock()
		}
	}
	return s, nil
}

// afterFuncer is a context that runs a function when it ends, as
// context.AfterFunc does, at less cost (h2front's stream contexts, and
// grpcfront's calls over them).
type afterFuncer interface {
	AfterFunc(func()) (stop func() bool)
}

// watch runs f once ctx ends, and returns what stops that (nil: ctx never
// ends). A context with an AfterFunc method of its own is asked directly:
// context.AfterFunc would wrap f in a cancelable context of its own,
// registered with ctx's (an allocation for it, another for its parent's
// map of children, two lock round trips per call).
func watch(ctx context.Context, f func()) (stop func() bool) {
	if a, ok := ctx.(afterFuncer); ok {
		return a.AfterFunc(f)
	}
	if ctx.Done() == nil {
		return nil
	}
	return context.AfterFunc(ctx, f)
}

// Request is a call option that gives the call's request metadata and
// :authority directly, in place of the context's outgoing metadata, so a
// proxy that already holds them saves the copy gRPC's metadata package
// makes. MD's keys must be lowercase, as in metadata from a gRPC server
// stream. Other ClientConnInterface implementations ignore it.
type Request struct {
	grpc.EmptyCallOption
	MD        metadata.MD
	Authority string
}

var contentTypes = map[string]string{"": "application/grpc", "proto": "application/grpc"}

var unaryDesc = &grpc.StreamDesc{}

// Invoke makes a unary call. Besides NewStream's options it fills
// grpc.Header and grpc.Trailer.
func (cl *Client) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	cs, err := cl.NewStream(ctx, unaryDesc, method, opts...)
	if err != nil {
		return err
	}
	defer func() {
		for _, o := range opts {
			switch o := o.(type) {
			case grpc.HeaderCallOption:
				*o.HeaderAddr, _ = cs.Header()
			case grpc.TrailerCallOption:
				*o.TrailerAddr = cs.Trailer()
			}
		}
	}()
	if err := cs.SendMsg(args); err != nil && !errors.Is(err, io.EOF) {
		cs.(*stream).fail(status.Convert(err), http2.ErrCodeCancel)
		return err
	}
	_ = cs.CloseSend()
	if err := cs.RecvMsg(reply); err != nil {
		if errors.Is(err, io.EOF) {
			return status.Error(codes.Internal, "envgate: the upstream sent no response message")
		}
		return err
	}
	err = cs.RecvMsg(reply)
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err == nil {
		return status.Error(codes.Internal, "envgate: the upstream sent more than one response to a unary call")
	}
	return err
}
