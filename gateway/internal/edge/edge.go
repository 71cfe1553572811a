// Package edge guards the gateway's client-facing listeners: it caps the
// connections open at once, refusing the rest clearly, and keeps per
// connection the count of streams the client reset early, closing a
// connection that resets too many (HTTP/2 Rapid Reset, CVE-2023-44487), as
// Envoy's connection manager does. It also tells how many bytes each
// connection holds in the gateway, so the overload manager can close the
// one that holds the most, and pauses reading from those that hold much
// while the manager asks (PauseReads).
package edge

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// Options configure the listeners of one gateway.
type Options struct {
	// MaxConns caps the client connections open at once across every
	// listener sharing the Limiter; 0 means no cap.
	MaxConns int
	// PrematureResets is Envoy's overload.premature_reset_total_stream_count:
	// a connection is closed once its early resets reach it, or, after that
	// many streams, once they are at least half of its streams. 0 or less
	// turns it off.
	PrematureResets int
	// OutboundCap bounds the response bytes a connection holds that the
	// client has not taken yet (the socket, or gRPC's buffers behind an
	// HTTP/2 window the client keeps closed): a call waits before it
	// takes the next message from its upstream while its connection holds
	// this much, so a client that does not read holds back its upstream
	// (through flow control) instead of filling the gateway. 0 means
	// DefaultOutboundCap. Envoy's equivalent is
	// per_connection_buffer_limit_bytes (1 MiB).
	OutboundCap int64
	// Log receives a line per refused connection (at most one a second)
	// and one per connection that had streams reset early.
	Log *slog.Logger
	// OnRefused and OnResetClose, when set, count refusals and connections
	// closed for early resets (metrics).
	OnRefused    func()
	OnResetClose func()
}

// DefaultOutboundCap is 4 MiB: a few messages of the common sizes, and
// room for a load balancer's connection that carries many clients' calls.
const DefaultOutboundCap = 4 << 20

// Limiter is the connection count shared by a gateway's listeners.
type Limiter struct {
	opts Options
	open atomic.Int64
	// lastRefusalLog rate-limits the refusal log line (unix nanoseconds).
	lastRefusalLog atomic.Int64

	mu    sync.Mutex // guards conns and drained; never held with a Conn's mu
	conns map[*Conn]struct{}
	// drained is made by calls waiting for a connection's outbound bytes
	// to fall under OutboundCap, and closed by the next write that frees
	// some; waiting counts them, so writes skip the lock otherwise.
	drained chan struct{}
	waiting atomic.Int32

	// onRead is called after every readKick bytes read across the
	// connections (the overload manager's Kick); unread counts toward it.
	onRead atomic.Pointer[func()]
	unread atomic.Int64

	// paused is open while reads are paused (PauseReads): a connection
	// holding pauseMin or more waits on it before it reads, and it is
	// closed when reads resume. nil: not paused. pausedReads counts the
	// reads waiting.
	paused      atomic.Pointer[chan struct{}]
	pauseMin    atomic.Int64
	pausedReads atomic.Int32
}

// PauseReads stops reading from the connections that hold min bytes or
// more until ResumeReads, as Envoy disables reading from a connection
// whose buffers passed their high watermark: while memory nears its
// limit, what those clients keep sending stays in their socket buffers
// and, through TCP's and HTTP/2's flow control, in the clients, instead
// of arriving faster than the overload manager can close connections.
// Connections holding less (calls that complete) are read as ever.
func (l *Limiter) PauseReads(min int64) {
	l.pauseMin.Store(min)
	ch := make(chan struct{})
	l.paused.CompareAndSwap(nil, &ch)
}

// ResumeReads ends PauseReads: the reads waiting go on.
func (l *Limiter) ResumeReads() {
	if ch := l.paused.Swap(nil); ch != nil {
		close(*ch)
	}
}

// readKick is how many bytes the connections read between two calls of the
// read hook.
const readKick = 4 << 20

// OnRead sets fn to be called after every 4 MiB the connections read, so a
// memory watcher sees a burst of requests as it arrives; reads counted with
// CountRead (the upstreams', whose responses fill memory as fast) count
// toward it too.
func (l *Limiter) OnRead(fn func()) { l.onRead.Store(&fn) }

// CountRead counts n bytes read toward the read hook (OnRead).
func (l *Limiter) CountRead(n int) {
	if n > 0 && l.unread.Add(int64(n)) >= readKick {
		l.unread.Store(0)
		if fn := l.onRead.Load(); fn != nil {
			(*fn)()
		}
	}
}

// NewLimiter returns the shared state of listeners with opts.
func NewLimiter(opts Options) *Limiter {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.OutboundCap <= 0 {
		opts.OutboundCap = DefaultOutboundCap
	}
	return &Limiter{opts: opts, conns: map[*Conn]struct{}{}}
}

// Listen wraps inner. h2c says the listener speaks plaintext HTTP/2, so a
// refused connection can be told why in a GOAWAY frame; a TLS listener's
// refusal is a plain close, since nothing can be said before the handshake.
func (l *Limiter) Listen(inner net.Listener, h2c bool) net.Listener {
	return &listener{Listener: inner, l: l, h2c: h2c}
}

type listener struct {
	net.Listener
	l   *Limiter
	h2c bool
}

// refusalWriteTimeout bounds the refusal's write: the socket buffer of a
// new connection always takes a few dozen bytes, so this never waits
// unless the peer is already gone.
const refusalWriteTimeout = 100 * time.Millisecond

func (ln *listener) Accept() (net.Conn, error) {
	for {
		nc, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		max := int64(ln.l.opts.MaxConns)
		if n := ln.l.open.Add(1); max > 0 && n > max {
			ln.l.open.Add(-1)
			ln.refuse(nc)
			continue
		}
		c := &Conn{Conn: nc, l: ln.l, opened: time.Now(), done: make(chan struct{})}
		c.addr = &Addr{Addr: nc.RemoteAddr(), c: c}
		ln.l.mu.Lock()
		ln.l.conns[c] = struct{}{}
		ln.l.mu.Unlock()
		return c, nil
	}
}

// refuse closes a connection over the cap, telling an h2c client why with
// GOAWAY ENHANCE_YOUR_CALM (what Envoy's overload manager sends when it
// stops accepting, in words).
func (ln *listener) refuse(nc net.Conn) {
	if ln.h2c {
		_ = nc.SetWriteDeadline(time.Now().Add(refusalWriteTimeout))
		fr := http2.NewFramer(nc, nil)
		_ = fr.WriteSettings()
		_ = fr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte("envgate: connection limit reached, try another replica or later"))
	}
	_ = nc.Close()
	if f := ln.l.opts.OnRefused; f != nil {
		f()
	}
	now := time.Now().UnixNano()
	if last := ln.l.lastRefusalLog.Load(); now-last >= int64(time.Second) && ln.l.lastRefusalLog.CompareAndSwap(last, now) {
		ln.l.opts.Log.Warn("connection refused: connection limit reached", "limit", ln.l.opts.MaxConns, "peer", nc.RemoteAddr().String())
	}
}

// Conn is an accepted client connection.
type Conn struct {
	net.Conn
	l      *Limiter
	addr   *Addr
	opened time.Time

	mu        sync.Mutex // guards the counters and closed
	streams   int        // streams ended
	premature int        // of which the client reset early
	closed    bool
	resetShut bool          // closed for early resets
	done      chan struct{} // closed with closed: ends a paused read

	// Bytes through the connection, for held: read on the socket, what
	// calls took out of it (received), and the response bytes reserved or
	// given to it to send that were not written yet (outbound, never
	// below 0: writes also carry framing).
	read, received, outbound, calls atomic.Int64
	// passthrough: what is read is relayed as it comes (an upgraded
	// connection), so none of it counts as held.
	passthrough atomic.Bool
}

// Read counts what the client sent. While reads are paused (PauseReads)
// a connection holding the pause's minimum or more waits until they
// resume or the connection closes.
func (c *Conn) Read(b []byte) (int, error) {
	if ch := c.l.paused.Load(); ch != nil && c.held() >= c.l.pauseMin.Load() {
		c.l.pausedReads.Add(1)
		closed := false
		select {
		case <-*ch:
		case <-c.done:
			// Close ends the pause before it closes the socket: reading
			// now could still take bytes of a closed connection.
			closed = true
		}
		c.l.pausedReads.Add(-1)
		if closed {
			return 0, net.ErrClosed
		}
	}
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	c.l.CountRead(n)
	return n, err
}

// Write counts what reached the client, and wakes the calls waiting for
// the connection to drain.
func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.wrote(int64(n))
	return n, err
}

// WriteBuffers is Write of several buffers, in one system call (writev)
// on a TCP connection; it consumes v. The connection's own vectored write
// comes first: net.Buffers' WriteTo would find the *net.TCPConn embedded
// in a rawio connection and write past it.
func (c *Conn) WriteBuffers(v *net.Buffers) (n int64, err error) {
	if vw, ok := c.Conn.(interface {
		WriteBuffers(*net.Buffers) (int64, error)
	}); ok {
		n, err = vw.WriteBuffers(v)
	} else {
		n, err = v.WriteTo(c.Conn)
	}
	c.wrote(n)
	return n, err
}

// wrote counts n bytes that reached the client.
func (c *Conn) wrote(n int64) {
	for {
		o := c.outbound.Load()
		if o == 0 || c.outbound.CompareAndSwap(o, max(o-n, 0)) {
			break
		}
	}
	if c.l.waiting.Load() > 0 {
		c.l.wake()
	}
}

func (l *Limiter) wake() {
	l.mu.Lock()
	if l.drained != nil {
		close(l.drained)
		l.drained = nil
	}
	l.mu.Unlock()
}

// reserve waits until the connection holds less than the outbound cap and
// reserves n bytes of it; the error is ctx's, or says the connection
// closed.
func (c *Conn) reserve(ctx context.Context, n int64) error {
	limit := c.l.opts.OutboundCap
	for {
		o := c.outbound.Load()
		if o < limit {
			if c.outbound.CompareAndSwap(o, o+n) {
				return nil
			}
			continue
		}
		l := c.l
		l.mu.Lock()
		if l.drained == nil {
			l.drained = make(chan struct{})
		}
		ch := l.drained
		l.waiting.Add(1)
		l.mu.Unlock()
		// Again once registered: a write in between would not wake us.
		if c.outbound.Load() < limit {
			l.waiting.Add(-1)
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			l.waiting.Add(-1)
			return ctx.Err()
		}
		l.waiting.Add(-1)
	}
}

// callOverhead is what a call may read beyond its messages' bytes
// (HEADERS, frame headers, WINDOW_UPDATE, PING, RST_STREAM); TLS records
// add under 0.2% of what they carry, counted by dividing by 256.
const callOverhead = 1024

// held estimates the bytes the gateway holds for the connection: read from
// the socket and not yet taken by a call (messages gRPC's server buffers
// until they are whole), and given to it to send and not yet written (a
// client that does not read, or reads slowly). Framing makes both a little
// high; the overhead allowed per call keeps that from growing with the
// connection's age.
func (c *Conn) held() int64 {
	if c.passthrough.Load() {
		return c.outbound.Load()
	}
	received := c.received.Load()
	in := c.read.Load() - received - received/256 - callOverhead*(c.calls.Load()+1)
	return max(in, 0) + c.outbound.Load()
}

// CloseLargest closes the open connection that holds the most, if it holds
// at least min bytes (overload.Holders).
func (l *Limiter) CloseLargest(min int64) (held int64, peer string, ok bool) {
	var victim *Conn
	l.mu.Lock()
	for c := range l.conns {
		if h := c.held(); h >= min && h > held {
			victim, held = c, h
		}
	}
	l.mu.Unlock()
	if victim == nil {
		return 0, "", false
	}
	_ = victim.Close()
	return held, victim.addr.String(), true
}

// RemoteAddr is the client's address, carrying the connection so a stream
// handler can find it from the address gRPC gives it (peer.Peer.Addr).
func (c *Conn) RemoteAddr() net.Addr { return c.addr }

// Close closes the connection once and logs a summary of the streams the
// client reset early, in place of a line per stream.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	premature, streams, shut := c.premature, c.streams, c.resetShut
	c.mu.Unlock()
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	c.l.open.Add(-1)
	if c.l.waiting.Load() > 0 {
		c.l.wake() // its waiting calls end with their contexts
	}
	if premature > 0 {
		level := slog.LevelInfo
		if shut {
			level = slog.LevelWarn
		}
		c.l.opts.Log.Log(context.Background(), level, "connection closed", "peer", c.addr.String(), "streams", streams,
			"streams_reset_early", premature, "closed_for_resets", shut,
			"duration_ms", time.Since(c.opened).Milliseconds())
	}
	return c.Conn.Close()
}

// streamEnded counts a stream of the connection; premature says the client
// reset it early. The connection is closed once too many were.
//
// The rule is Envoy's ConnectionManagerImpl::maybeDrainDueToPrematureResets
// (source/common/http/conn_manager_impl.cc): with limit L, nothing happens
// while fewer than L streams ended and fewer than L were premature;
// otherwise the connection is closed when premature resets are at least
// half of the streams.
func (c *Conn) streamEnded(premature bool) {
	limit := c.l.opts.PrematureResets
	c.mu.Lock()
	c.streams++
	if premature {
		c.premature++
	}
	shut := false
	if limit > 0 && !c.resetShut && c.premature > 0 &&
		(c.streams >= limit || c.premature >= limit) && c.premature*2 >= c.streams {
		c.resetShut, shut = true, true
	}
	c.mu.Unlock()
	if shut {
		if f := c.l.opts.OnResetClose; f != nil {
			f()
		}
		_ = c.Close()
	}
}

// Addr is a client connection's remote address, with the connection.
type Addr struct {
	net.Addr
	c *Conn
}

// Unwrap is the address as the listener gave it (a *net.TCPAddr).
func (a *Addr) Unwrap() net.Addr { return a.Addr }

// StreamEnded counts a stream of the connection: premature says the client
// reset it early. The connection is closed once too many were.
func (a *Addr) StreamEnded(premature bool) { a.c.streamEnded(premature) }

// CallStarted counts a call of the connection.
func (a *Addr) CallStarted() { a.c.calls.Add(1) }

// Received counts n message bytes a call took from the connection.
func (a *Addr) Received(n int) { a.c.received.Add(int64(n)) }

// Consumed says that every byte read from the connection so far was taken
// by the requests but pending (read ahead into the server's buffer): a
// server that knows where its requests end (the HTTP/1.1 servers, between
// requests) says so, so that what a long-lived connection carried is
// never counted as held.
func (a *Addr) Consumed(pending int) {
	c := a.c
	r := c.read.Load() - int64(pending)
	// held takes off received/256 for TLS framing; this is exact.
	c.received.Store(r - r/257)
}

// Passthrough says that from now on the connection's bytes are relayed as
// they are read (an upgraded connection: WebSocket), so none counts as
// held.
func (a *Addr) Passthrough() { a.c.passthrough.Store(true) }

// Reserve waits, before a call takes its next response message from the
// upstream, until the connection holds less than the outbound cap, and
// reserves n bytes for the message; Adjust corrects the reservation to the
// message's size (or gives it back, with -n, when none came).
func (a *Addr) Reserve(ctx context.Context, n int) error { return a.c.reserve(ctx, int64(n)) }

// Adjust adds delta to the connection's outbound bytes (never below 0).
func (a *Addr) Adjust(delta int) {
	for {
		o := a.c.outbound.Load()
		if a.c.outbound.CompareAndSwap(o, max(o+int64(delta), 0)) {
			break
		}
	}
	if delta < 0 && a.c.l.waiting.Load() > 0 {
		a.c.l.wake()
	}
}
