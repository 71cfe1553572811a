package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"
)

// upConn is one upstream HTTP/1.1 connection of the fast path, used by one
// request at a time.
type upConn struct {
	nc     net.Conn
	br     *bufio.Reader // reads io
	bw     *bufio.Writer // writes io
	io     upIO
	key    poolKey
	idleAt time.Time
	reused bool // served a request before this one
}

// writeReader is a connection that writes a request and reads the first
// bytes of its answer in one wait for the answer (rawio.Conn).
type writeReader interface {
	WriteRead(w, p []byte) (written, n int, err error)
}

// upIO is an upstream connection as its buffers reach it. A write made
// while hold is set (flushForAnswer) is held and sent by the next read,
// in one WriteRead, when the connection has one: a request's last bytes
// are sent as its answer is awaited, and the read that would find nothing
// yet is not made.
type upIO struct {
	nc   net.Conn
	wr   writeReader // nc's, or nil
	hold bool        // hold the next write
	held []byte      // the held write: the bufio.Writer's buffer, untouched until the next write
}

// flushForAnswer sends what u.bw holds, the end of a request, as its
// answer is awaited (upIO): the next use of u must be reading that
// answer, which sends it.
func (u *upConn) flushForAnswer() error {
	// Nothing buffered, nothing written: a hold would catch a later write.
	u.io.hold = u.io.wr != nil && u.bw.Buffered() > 0
	err := u.bw.Flush()
	u.io.hold = false
	return err
}

func (x *upIO) Write(p []byte) (int, error) {
	if x.hold {
		x.hold = false
		x.held = p
		return len(p), nil
	}
	return x.nc.Write(p)
}

func (x *upIO) Read(p []byte) (int, error) {
	if x.held != nil {
		w := x.held
		x.held = nil
		_, n, err := x.wr.WriteRead(w, p)
		return n, err
	}
	return x.nc.Read(p)
}

type poolKey struct{ addr, tlsKey string }

// upBufSize is each upstream connection's read and write buffer: a
// typical response head and a small body in one read.
const upBufSize = 4 << 10

// h1Pool keeps idle upstream HTTP/1.1 connections per endpoint, as Envoy's
// connection pool does, newest first; a connection idle past idleTimeout
// is closed (by the sweep, or when found), so environments without
// traffic hold none.
type h1Pool struct {
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	maxIdle     int
	idleTimeout time.Duration

	mu     sync.Mutex // guards idle, sweep and closed; never held across I/O
	idle   map[poolKey][]*upConn
	sweep  *time.Timer // armed while any connection is idle
	closed bool
}

func newH1Pool(dial func(context.Context, string, string) (net.Conn, error), maxIdle int, idleTimeout time.Duration) *h1Pool {
	return &h1Pool{dial: dial, maxIdle: maxIdle, idleTimeout: idleTimeout, idle: map[poolKey][]*upConn{}}
}

// get returns an idle connection to ep, or a new one; now is the time
// (the caller's clock, read once per request).
func (p *h1Pool) get(ctx context.Context, ep Endpoint, now time.Time) (*upConn, error) {
	k := poolKey{ep.Addr, ep.TLSKey}
	var stale []*upConn
	p.mu.Lock()
	for cs := p.idle[k]; len(cs) > 0; cs = p.idle[k] {
		c := cs[len(cs)-1]
		p.idle[k] = cs[:len(cs)-1]
		if now.Sub(c.idleAt) < p.idleTimeout {
			p.mu.Unlock()
			closeAll(stale)
			c.reused = true
			return c, nil
		}
		stale = append(stale, c)
	}
	if len(p.idle[k]) == 0 {
		delete(p.idle, k)
	}
	p.mu.Unlock()
	closeAll(stale)
	return p.open(ctx, ep, k)
}

func (p *h1Pool) open(ctx context.Context, ep Endpoint, k poolKey) (*upConn, error) {
	nc, err := p.dial(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, err
	}
	if ep.TLS != nil {
		cfg := ep.TLS.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(ep.Addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", ep.Addr, err)
		}
		nc = tc
	}
	u := &upConn{nc: nc, key: k}
	u.io.nc = nc
	u.io.wr, _ = nc.(writeReader)
	u.br = bufio.NewReaderSize(&u.io, upBufSize)
	u.bw = bufio.NewWriterSize(&u.io, upBufSize)
	return u, nil
}

// put keeps c for the next request to its endpoint, or closes it; now is
// the time.
func (p *h1Pool) put(c *upConn, now time.Time) {
	c.idleAt = now
	p.mu.Lock()
	if p.closed || len(p.idle[c.key]) >= p.maxIdle {
		p.mu.Unlock()
		_ = c.nc.Close()
		return
	}
	p.idle[c.key] = append(p.idle[c.key], c)
	if p.sweep == nil {
		p.sweep = time.AfterFunc(p.idleTimeout, p.sweepIdle)
	}
	p.mu.Unlock()
}

// sweepIdle closes the connections idle past the timeout, and runs again
// while any remain.
func (p *h1Pool) sweepIdle() {
	now := time.Now()
	var stale []*upConn
	p.mu.Lock()
	p.sweep = nil
	next := time.Duration(-1)
	for k, cs := range p.idle {
		kept := cs[:0]
		for _, c := range cs {
			if age := now.Sub(c.idleAt); age >= p.idleTimeout {
				stale = append(stale, c)
			} else {
				kept = append(kept, c)
				if left := p.idleTimeout - age; next < 0 || left < next {
					next = left
				}
			}
		}
		clear(cs[len(kept):])
		if len(kept) == 0 {
			delete(p.idle, k)
		} else {
			p.idle[k] = kept
		}
	}
	if next >= 0 && !p.closed {
		p.sweep = time.AfterFunc(next, p.sweepIdle)
	}
	p.mu.Unlock()
	closeAll(stale)
}

// close closes the idle connections; connections in use close when their
// request ends.
func (p *h1Pool) close() {
	var all []*upConn
	p.mu.Lock()
	p.closed = true
	if p.sweep != nil {
		p.sweep.Stop()
	}
	for _, cs := range p.idle {
		all = append(all, cs...)
	}
	p.idle = map[poolKey][]*upConn{}
	p.mu.Unlock()
	closeAll(all)
}

// idleCount is how many idle connections the pool holds.
func (p *h1Pool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, cs := range p.idle {
		n += len(cs)
	}
	return n
}

func closeAll(cs []*upConn) {
	for _, c := range cs {
		_ = c.nc.Close()
	}
}

// tryOn makes one attempt on a connection to rq.ep: exchange sends the
// request on u and reads the head of its answer (replayable: the request
// can be sent again). A reused connection that fails before any answer is
// replaced once when the request can be sent again, as net/http's
// transport retries a request nothing was sent of. It returns the
// connection with the body still to read, or why there is none (perTry:
// the per-try timeout expired); gone reports a client that left.
func (p *Proxy) tryOn(ctx context.Context, rq *request, deadline time.Time, perTry time.Duration, gone func() bool, exchange func(u *upConn) (replayable bool, err error)) (*upConn, error, bool) {
	tryDeadline := deadline
	if perTry > 0 {
		if d := time.Now().Add(perTry); tryDeadline.IsZero() || d.Before(tryDeadline) {
			tryDeadline = d
		}
	}
	if !tryDeadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, tryDeadline)
		defer cancel()
	}
	// A first try is made as the request starts: its clock will do.
	now := rq.start
	if rq.retries > 0 {
		now = time.Now()
	}
	u, err := p.pool.get(ctx, rq.ep, now)
	for fresh := false; ; fresh = true {
		if err != nil {
			return nil, err, false
		}
		if !tryDeadline.IsZero() {
			_ = u.nc.SetDeadline(tryDeadline)
		}
		replayable, err := exchange(u)
		if err == nil {
			return u, nil, false
		}
		_ = u.nc.Close()
		switch {
		case gone():
			return nil, err, false
		case isTimeout(err):
			return nil, err, perTry > 0 && !deadlinePassed(deadline)
		case fresh || !u.reused || !replayable:
			return nil, err, false
		}
		u, err = p.pool.open(ctx, rq.ep, u.key)
		if p.o.OnDial != nil {
			p.o.OnDial(err)
		}
	}
}
