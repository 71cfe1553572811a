// Package edge guards the gateway's client-facing listeners: it caps the
// connections open at once, refusing the rest clearly, and keeps per
// connection the count of streams the client reset early, closing a
// connection that resets too many (HTTP/2 Rapid Reset, CVE-2023-44487), as
// Envoy's connection manager does.
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
	// Log receives a line per refused connection (at most one a second)
	// and one per connection that had streams reset early.
	Log *slog.Logger
	// OnRefused and OnResetClose, when set, count refusals and connections
	// closed for early resets (metrics).
	OnRefused    func()
	OnResetClose func()
}

// Limiter is the connection count shared by a gateway's listeners.
type Limiter struct {
	opts Options
	open atomic.Int64
	// lastRefusalLog rate-limits the refusal log line (unix nanoseconds).
	lastRefusalLog atomic.Int64
}

// NewLimiter returns the shared state of listeners with opts.
func NewLimiter(opts Options) *Limiter {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Limiter{opts: opts}
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
		c := &Conn{Conn: nc, l: ln.l, opened: time.Now()}
		c.addr = &Addr{Addr: nc.RemoteAddr(), c: c}
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
	resetShut bool // closed for early resets
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
	premature, streams, shut := c.premature, c.streams, c.resetShut
	c.mu.Unlock()
	c.l.open.Add(-1)
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
