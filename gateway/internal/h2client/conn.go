package h2client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/tlsbatch"
)

const (
	// defaultFrame is HTTP/2's initial maximum frame size.
	defaultFrame = 16384
	// maxHeaderList bounds a response's header block, as gRPC's default.
	maxHeaderList = 16 << 20
	// maxStreamID is the last client stream ID; the connection is replaced
	// before it runs out.
	maxStreamID = 1<<31 - 1
)

// errUnusable means the connection takes no new streams; errFull that it
// has as many as the upstream allows. The caller picks another.
var (
	errUnusable = errors.New("connection takes no new streams")
	errFull     = errors.New("connection at the upstream's concurrent stream limit")
)

// conn is one HTTP/2 connection to one endpoint. Its parts are in their
// own files and types:
//
//   - writer (writer.go): callers write their frames into the connection's
//     buffer themselves; a flusher goroutine takes what has gathered and
//     sends it, so the frames of many calls share one system call (on
//     loopback a write costs more than all the framing around it).
//   - reader (reader.go): one goroutine reads frames and hands them to
//     streams.
//   - flow control (flow.go): the windows the upstream granted (sendFlow)
//     and the ones this client grants (recvWindow).
//
// Locks, and what each guards:
//   - writer.wmu: the outgoing buffer, the HPACK encoder, and each stream's
//     sendClosed/rstSent.
//   - conn.mu: streams, stream IDs, the active count, the send windows
//     (sendFlow and each stream's sendWin), draining/closed.
//   - stream.mu: what the stream received (stream.go).
//
// Order: wmu before mu; a stream's mu is never held while taking wmu or
// mu. No lock is held across network I/O: the flusher swaps the buffer out
// under wmu and writes it without any lock, under a write deadline, so an
// upstream that stops reading cannot keep the reader from queueing
// WINDOW_UPDATE and PING acknowledgements, and fails the connection after
// writeTimeout instead of wedging it.
type conn struct {
	addr string
	nc   net.Conn
	// batch, over TLS, is the connection under nc, which gathers the
	// records of the flusher's writes into one system call (tlsbatch);
	// nil for plaintext.
	batch *tlsbatch.Conn
	ep    *endpoint // the endpoint it connects to; its active count and health
	cl    *Client   // nil for a connection outside a client
	// onRoom is called, with no lock held, when a stream frees up on a
	// connection that was at the upstream's limit.
	onRoom                      func()
	keepalive, keepaliveTimeout time.Duration

	writer
	reader
	keepaliveState

	unusable atomic.Bool // draining or closed: no new streams
	answered atomic.Bool // the upstream sent headers on some stream

	mu          sync.Mutex
	streams     map[uint32]*stream
	nextID      uint32
	active      int
	opened      int // streams opened, for maxRequests
	maxRequests int // streams per connection before it drains; 0: no limit
	maxStreams  uint32
	flow        sendFlow
	draining    bool
	closed      bool
	changed     chan struct{} // made by waiters, closed on any change

	gone     chan struct{} // closed once the connection takes no new streams
	goneOnce sync.Once
	done     chan struct{} // closed when the reader has exited
}

// dial connects to addr and completes the HTTP/2 handshake: the connection
// is returned once the upstream's SETTINGS arrived, as gRPC waits for a
// server preface before calling a connection ready. start runs it.
func dial(ctx context.Context, addr string, d func(context.Context, string) (net.Conn, error), o connOptions) (*conn, error) {
	nc, err := d(ctx, addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(interface{ SetNoDelay(bool) error }); ok {
		_ = tc.SetNoDelay(true) // a *net.TCPConn, or one under rawio
	}
	var batch *tlsbatch.Conn
	if o.tls != nil {
		batch = tlsbatch.New(nc)
		if nc, err = handshakeTLS(ctx, batch, o.tls); err != nil {
			return nil, err
		}
	}
	c := &conn{
		addr: addr, nc: nc, batch: batch,
		streams:    map[uint32]*stream{},
		nextID:     1,
		maxStreams: ^uint32(0),
		flow:       newSendFlow(),
		gone:       make(chan struct{}),
		done:       make(chan struct{}),
		ep:         &endpoint{},
		onRoom:     func() {},
		keepalive:  o.keepalive, keepaliveTimeout: o.keepaliveTimeout,
		maxRequests: o.maxRequests,
	}
	c.writer.init(o.writeTimeout)
	c.reader.init(nc, o.onRead)

	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	err = c.handshake()
	if !stop() || err != nil {
		nc.Close()
		if err == nil || ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return nil, fmt.Errorf("HTTP/2 handshake with %s: %w", addr, err)
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

// handshakeTLS secures nc with cfg, within ctx, and checks that the backend
// speaks HTTP/2: it chose h2 by ALPN, or chose nothing (a server without
// ALPN, which Envoy also accepts for an HTTP/2 cluster).
func handshakeTLS(ctx context.Context, nc net.Conn, cfg *tls.Config) (net.Conn, error) {
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "" && p != "h2" {
		tc.Close()
		return nil, fmt.Errorf("TLS: the backend chose %q by ALPN, not h2", p)
	}
	return tc, nil
}

// connOptions are a connection's timeouts, TLS and request limit (see
// Options).
type connOptions struct {
	tls                         *tls.Config
	maxRequests                 int
	writeTimeout                time.Duration
	keepalive, keepaliveTimeout time.Duration
	onRead                      func(int)
}

// start runs the connection's reader and flusher, owned by wg, and its
// keepalive timer; exited is called once both have ended, after the
// connection closed. A connection costs these two goroutines and no more:
// a gateway routing to 1,000 environments of 3 endpoints holds 3,000
// upstream connections, and each parked goroutine is a stack of 8 KiB or
// more (make bench's environment rows).
func (c *conn) start(wg *sync.WaitGroup, exited func()) {
	var left atomic.Int32
	left.Store(2)
	run := func(f func()) {
		wg.Go(func() {
			f()
			if left.Add(-1) == 0 {
				exited()
			}
		})
	}
	c.startKeepalive()
	run(c.readLoop)
	run(c.flushLoop)
}

// keepaliveState is the keepalive timer's: the callbacks of one timer
// never overlap (each is armed by the previous one's Reset), and kaMu
// keeps them out of the way of stopKeepalive.
type keepaliveState struct {
	kaMu      sync.Mutex // guards the fields below; taken before c.mu and wmu
	kaTimer   *time.Timer
	kaStopped bool
	kaPinged  bool   // a PING is out, its answer awaited
	kaLast    uint64 // frames read at the last look
}

// startKeepalive arms the keepalive: a PING when calls are in flight and
// nothing arrived from the upstream for c.keepalive, and the connection
// failed when nothing arrives for c.keepaliveTimeout after it: a backend
// that froze or vanished without closing its connection (a node gone, a
// SIGSTOPped process) fails its calls and is redialled instead of holding
// them until their deadlines. Like gRPC's client keepalive, it stays
// silent on a connection with no calls, which gRPC servers would count as
// abuse. It runs on a timer, not a goroutine of its own.
func (c *conn) startKeepalive() {
	if c.keepalive <= 0 {
		return
	}
	c.kaMu.Lock()
	defer c.kaMu.Unlock()
	c.kaLast = c.frames.Load()
	c.kaTimer = time.AfterFunc(c.keepalive, c.keepaliveTick)
}

// stopKeepalive disarms the keepalive for good; once it returns no tick
// runs. The reader calls it as it exits.
func (c *conn) stopKeepalive() {
	c.kaMu.Lock()
	defer c.kaMu.Unlock()
	c.kaStopped = true
	if c.kaTimer != nil {
		c.kaTimer.Stop()
	}
}

func (c *conn) keepaliveTick() {
	c.kaMu.Lock()
	defer c.kaMu.Unlock()
	if c.kaStopped {
		return
	}
	n := c.frames.Load()
	if c.kaPinged {
		if n == c.kaLast {
			// fail closes the connection; the reader then stops the
			// keepalive once this tick has let go of kaMu.
			c.fail(fmt.Errorf("no answer to a keepalive PING in %v", c.keepaliveTimeout))
			return
		}
		c.kaPinged, c.kaLast = false, n
		c.kaTimer.Reset(c.keepalive)
		return
	}
	c.mu.Lock()
	idle := c.active == 0
	c.mu.Unlock()
	if n != c.kaLast || idle {
		c.kaLast = n
		c.kaTimer.Reset(c.keepalive)
		return
	}
	c.lockWrite()
	c.frameHeader(8, http2.FramePing, 0, 0)
	_, _ = c.bw.Write([]byte("envgate\x00"))
	c.unlockWrite()
	c.kaPinged = true
	c.kaTimer.Reset(c.keepaliveTimeout)
}

func (c *conn) handshake() error {
	_, _ = c.bw.WriteString(http2.ClientPreface)
	c.writeSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow})
	c.writeWindowUpdate(0, connWindow-65535)
	if _, err := c.nc.Write(c.bw.Bytes()); err != nil {
		return err
	}
	c.bw.Reset()
	f, err := c.fr.ReadFrame()
	if err != nil {
		return err
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("upstream's first frame is %v, not SETTINGS", f.Header().Type)
	}
	return c.onSettings(sf)
}

// Frame writing; every write* runs under wmu.
// open registers s and sends its request headers.
// It does not wait: errFull when the upstream's concurrent stream limit is
// reached, errUnusable when the connection takes no new streams.
func (c *conn) open(s *stream) error {
	if c.unusable.Load() {
		return errUnusable
	}
	c.mu.Lock()
	switch {
	case c.draining || c.closed:
		c.mu.Unlock()
		return errUnusable
	case c.active >= int(c.maxStreams):
		c.mu.Unlock()
		return errFull
	}
	c.active++
	c.mu.Unlock()
	s.c = c

	c.lockWrite()
	c.mu.Lock()
	if c.closed || c.draining || c.nextID > maxStreamID {
		c.active--
		c.setDrainingLocked()
		c.mu.Unlock()
		c.wmu.Unlock()
		return errUnusable
	}
	s.id = c.nextID
	c.nextID += 2
	c.streams[s.id] = s
	c.ep.active.Add(1)
	if c.cl != nil {
		c.cl.requests.Add(1)
		c.cl.opened.Add(1)
	}
	c.opened++
	if c.maxRequests > 0 && c.opened >= c.maxRequests {
		// Envoy's max_requests_per_connection: this stream is the
		// connection's last; it closes once its streams end, and the
		// endpoint's manager opens another.
		c.setDrainingLocked()
	}
	s.sendWin = c.flow.initial // under the lock SETTINGS change it under
	if c.nextID > maxStreamID {
		c.setDrainingLocked()
	}
	c.mu.Unlock()
	c.hbuf.Reset()
	s.encodeHeaders(c.henc, &c.hbuf)
	c.writeHeaderBlock(s.id)
	c.unlockWrite()
	return nil
}

// writeData sends one message, in as many DATA frames as the windows and
// streams or state.
func (c *conn) waitLocked() chan struct{} {
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	return c.changed
}

func (c *conn) broadcastLocked() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

func (c *conn) setDrainingLocked() {
	c.draining = true
	c.unusable.Store(true)
	c.goneOnce.Do(func() { close(c.gone) })
	if c.active == 0 && !c.closed {
		c.closeLocked()
	}
}

// served reports whether the upstream ever answered a stream on the
// connection (sent it response headers).
func (c *conn) served() bool { return c.answered.Load() }

// drain stops new streams and closes the connection once its streams end.
func (c *conn) drain() {
	c.mu.Lock()
	c.setDrainingLocked()
	c.mu.Unlock()
}

func (c *conn) closeLocked() {
	c.closed = true
	c.unusable.Store(true)
	c.goneOnce.Do(func() { close(c.gone) })
	c.broadcastLocked()
	_ = c.nc.Close()
}

// fail closes the connection and ends every stream on it with UNAVAILABLE.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closeLocked()
	streams := c.streams
	c.streams = map[uint32]*stream{}
	c.active = 0
	c.ep.active.Add(-int32(len(streams)))
	if c.cl != nil {
		c.cl.requests.Add(-int32(len(streams)))
	}
	c.mu.Unlock()
	st := status.New(codes.Unavailable, fmt.Sprintf("upstream connection to %s lost: %v", c.addr, err))
	for _, s := range streams {
		if s.finishAs(st, Reset, false) {
			s.notify()
		}
	}
}

// close ends the connection at once.
func (c *conn) close() { c.fail(errors.New("connection closed by envgate")) }

// remove forgets a finished stream.
func (c *conn) remove(s *stream) {
	c.mu.Lock()
	wasFull := false
	if c.streams[s.id] == s {
		wasFull = c.active >= int(c.maxStreams)
		delete(c.streams, s.id)
		c.active--
		c.ep.active.Add(-1)
		if c.cl != nil {
			c.cl.requests.Add(-1)
		}
		c.broadcastLocked()
		if c.draining && c.active == 0 && !c.closed {
			c.closeLocked()
		}
	}
	c.mu.Unlock()
	if wasFull {
		c.onRoom()
	}
}

func (c *conn) stream(id uint32) *stream {
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	return s
}
