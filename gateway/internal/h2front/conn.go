package h2front

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/envgate/envgate/gateway/internal/hpackmemo"
)

// Error codes (RFC 9113 section 7).
const (
	ErrCodeNo        = http2.ErrCodeNo
	errProtocol      = http2.ErrCodeProtocol
	errInternal      = http2.ErrCodeInternal
	errFlowControl   = http2.ErrCodeFlowControl
	errStreamClosed  = http2.ErrCodeStreamClosed
	errRefusedStream = http2.ErrCodeRefusedStream
	errCalm          = http2.ErrCodeEnhanceYourCalm
)

const (
	preface        = http2.ClientPreface
	initialWindow  = 65535
	frameHeaderLen = 9
	prefaceWait    = 10 * time.Second
	// readBufSize is the connection's read buffer: a request's HEADERS
	// frame and a small body in one read.
	readBufSize = 4 << 10
	// prematureReset is how young a stream the client resets counts as
	// reset early (Envoy's premature_reset_min_stream_lifetime_seconds).
	prematureReset = time.Second
)

// streamCounter is what the edge listener's connection address tells
// (edge.Addr): each stream's end, and whether the client reset it early,
// for its Rapid Reset rule.
type streamCounter interface{ StreamEnded(premature bool) }

// byteCounter takes what the server consumed of what the connection read
// (edge.Addr): everything but the request bodies no handler read yet, so
// the overload manager knows what the connection holds.
type byteCounter interface {
	CallStarted()
	Received(n int)
}

// conn is one client connection.
type conn struct {
	s       *Server
	nc      net.Conn
	br      *bufio.Reader // the framer reads from it
	fr      *http2.Framer
	hb      headerBlock // decodes the header blocks fr reads
	counter streamCounter
	bytes   byteCounter
	peer    string // the client's address, made once
	w       writer
	// handlers are the connection's requests running; serve waits for them.
	handlers sync.WaitGroup

	// The reader's own.
	settingsSeen bool
	lastPingAt   time.Time // the client's last PING (pingPolicy)
	pingStrikes  int

	// Keepalive: frames read, and the count when the timer last looked.
	frames, lastSeen atomic.Uint64

	maxClientID atomic.Uint32 // highest stream the client opened

	smu     sync.Mutex // guards streams, active, goingAway and closed; taken before w.mu, never the other way
	streams map[uint32]*stream
	active  int // streams open or with a handler running
	// ending counts the streams in active that both sides ended, whose
	// handlers are returning: they do not count toward
	// MaxConcurrentStreams (noteEnded). Written under w.mu or smu.
	ending    atomic.Int32
	goingAway bool
	closed    bool
	idle      *time.Timer // armed while no stream is active (IdleTimeout)

	// Receive flow control of the connection: what the client may still
	// send, and what handlers read that was not granted again yet.
	recvAvail atomic.Int64
	unacked   atomic.Int64

	pingSent  atomic.Bool
	keepalive *time.Timer

	local atomic.Value // Request.ConnValue's

	noticeSent bool // the drain's GOAWAY notice went out; under w.mu

	// resetByUs are the last streams the server reset with frames of
	// theirs perhaps still on the way, which are discarded (RFC 9113
	// section 5.1, "closed"); under smu.
	resetByUs    [64]uint32
	resetByUsPos int
}

// noteResetLocked remembers that the server reset stream id; smu held.
func (c *conn) noteResetLocked(id uint32) {
	c.resetByUs[c.resetByUsPos%len(c.resetByUs)] = id
	c.resetByUsPos++
}

// wasResetByUs reports whether the server reset stream id lately.
func (c *conn) wasResetByUs(id uint32) bool {
	c.smu.Lock()
	defer c.smu.Unlock()
	for _, r := range c.resetByUs {
		if r == id {
			return true
		}
	}
	return false
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{s: s, nc: nc, streams: map[uint32]*stream{}}
	c.peer = nc.RemoteAddr().String()
	c.counter, _ = nc.RemoteAddr().(streamCounter)
	c.bytes, _ = nc.RemoteAddr().(byteCounter)
	c.w = writer{nc: nc, timeout: s.opts.WriteTimeout, connWindow: initialWindow, initialWindow: initialWindow, maxFrame: 16384}
	c.w.cond.L = &c.w.mu
	if tlsState(nc) != nil {
		c.w.chunk = writeChunk
		if c.w.batched = batchOf(nc); c.w.batched != nil {
			c.w.chunk = batchChunk
		}
	}
	c.w.vec = vectorOf(nc)
	c.br = bufio.NewReaderSize(nc, readBufSize)
	c.fr = http2.NewFramer(appendTo{&c.w}, c.br)
	c.hb.init(s.opts.HeaderTableSize, s.opts.MaxHeaderListSize)
	c.fr.SetMaxReadFrameSize(16384)
	c.fr.SetReuseFrames()
	c.w.enc = hpackmemo.New(&c.w.hbuf, frontMemo)
	c.recvAvail.Store(int64(s.opts.ConnWindow))
	return c
}

// serve reads the connection until it ends, then waits for its handlers.
func (c *conn) serve() {
	err := c.run()
	c.close(err)
	c.handlers.Wait()
	c.smu.Lock()
	if c.idle != nil {
		c.idle.Stop()
	}
	c.smu.Unlock()
	if c.keepalive != nil {
		c.keepalive.Stop()
	}
}

// connError ends the connection with GOAWAY(code).
// maxPingStrikes is how many PINGs too close together a client may
// send before GOAWAY (grpc-go internal/transport/http2_server.go).
const maxPingStrikes = 2

// pingPolicy enforces Options.MinPingInterval as gRPC's server enforces
// its keepalive policy (http2_server.go handlePing, with
// PermitWithoutStream): a PING sooner than the interval after the last
// one is a strike unless the server sent headers or data in between, and
// past maxPingStrikes the connection ends with GOAWAY ENHANCE_YOUR_CALM
// "too_many_pings", on which gRPC clients double their interval.
func (c *conn) pingPolicy() error {
	min := c.s.opts.MinPingInterval
	if min <= 0 {
		return nil
	}
	now := time.Now()
	last := c.lastPingAt
	c.lastPingAt = now
	if c.w.sentSince.Swap(false) {
		c.pingStrikes = 0
		return nil
	}
	if last.Add(min).After(now) {
		c.pingStrikes++
	}
	if c.pingStrikes > maxPingStrikes {
		return connError{code: errCalm, why: "too many pings", debug: []byte("too_many_pings")}
	}
	return nil
}

type connError struct {
	code  http2.ErrCode
	why   string
	debug []byte // the GOAWAY's debug data
}

func (e connError) Error() string {
	return fmt.Sprintf("http2: connection error %v: %s", e.code, e.why)
}

func (c *conn) run() error {
	_ = c.nc.SetReadDeadline(time.Now().Add(prefaceWait))
	var p [len(preface)]byte
	if _, err := io.ReadFull(c.br, p[:]); err != nil {
		return err
	}
	if string(p[:]) != preface {
		return errors.New("http2: bad connection preface")
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	c.writeSettings()
	if c.s.isDraining() {
		c.drainNotice()
	}
	c.armIdle()
	if d := c.s.opts.PingAfter; d > 0 {
		c.smu.Lock() // checkAlive reads it under smu
		c.keepalive = time.AfterFunc(d, c.checkAlive)
		c.smu.Unlock()
	}
	for {
		f, err := c.readFrame()
		if err != nil {
			var se http2.StreamError
			var ce http2.ConnectionError
			switch {
			case errors.As(err, &se):
				c.streamError(se.StreamID, se.Code)
				continue
			case errors.As(err, &ce):
				c.goAway(http2.ErrCode(ce), false)
				return err
			case errors.Is(err, http2.ErrFrameTooLarge):
				c.goAway(http2.ErrCodeFrameSize, false)
				return err
			}
			return err
		}
		if !c.settingsSeen {
			// The preface's second part is a SETTINGS frame.
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				c.goAway(errProtocol, false)
				return connError{code: errProtocol, why: "first frame not SETTINGS"}
			}
			c.settingsSeen = true
		}
		if err := c.process(f); err != nil {
			var ce connError
			if errors.As(err, &ce) {
				c.goAwayDebug(ce.code, false, ce.debug)
			}
			return err
		}
	}
}

// readFrame reads the next frame, a header block whole: a HEADERS frame
// and its CONTINUATION frames come as one *http2.MetaHeadersFrame.
func (c *conn) readFrame() (http2.Frame, error) {
	f, err := c.fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	c.counted(f)
	if hf, ok := f.(*http2.HeadersFrame); ok {
		return c.readHeaderBlock(hf)
	}
	return f, nil
}

// counted accounts a frame read: for the keepalive, and as consumed
// for the overload manager, but for a DATA frame's data, which is held
// until a handler reads it or it is dropped.
func (c *conn) counted(f http2.Frame) {
	c.frames.Add(1)
	if c.bytes != nil {
		n := frameHeaderLen + int(f.Header().Length)
		if d, ok := f.(*http2.DataFrame); ok {
			n -= len(d.Data())
		}
		c.bytes.Received(n)
	}
}

func (c *conn) process(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.pingSent.Store(false)
			return nil
		}
		if err := c.pingPolicy(); err != nil {
			return err
		}
		return c.queueControl(func() error { return c.fr.WritePing(true, f.Data) })
	case *http2.RSTStreamFrame:
		return c.onReset(f)
	case *http2.PriorityFrame:
		if f.StreamID == f.StreamDep {
			c.streamError(f.StreamID, errProtocol)
		}
		return nil
	case *http2.GoAwayFrame:
		// The client takes no more streams; ours finish.
		return nil
	case *http2.PushPromiseFrame:
		return connError{code: errProtocol, why: "PUSH_PROMISE from a client"}
	case *http2.ContinuationFrame:
		return connError{code: errProtocol, why: "CONTINUATION out of a header block"}
	}
	return nil // unknown frame types are ignored (RFC 9113 section 5.5)
}

// writeSettings sends the server's SETTINGS and grows the connection's
// receive window to ConnWindow.
func (c *conn) writeSettings() {
	o := &c.s.opts
	c.w.mu.Lock()
	if len(o.Settings) > 0 {
		ss := make([]http2.Setting, len(o.Settings))
		for i, s := range o.Settings {
			ss[i] = http2.Setting{ID: http2.SettingID(s.ID), Val: s.Val}
		}
		_ = c.fr.WriteSettings(ss...)
	} else {
		_ = c.fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384},
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: o.MaxConcurrentStreams},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(o.StreamWindow)},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: o.MaxHeaderListSize},
			http2.Setting{ID: http2.SettingHeaderTableSize, Val: o.HeaderTableSize},
		)
	}
	if d := o.ConnWindow - initialWindow; d > 0 {
		_ = c.fr.WriteWindowUpdate(0, uint32(d))
	}
	c.w.flushLocked()
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError{code: http2.ErrCode(ce), why: "invalid setting " + s.String()}
			}
			return connError{code: errProtocol, why: err.Error()}
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.smu.Lock() // for the streams' send windows; before w.mu
	c.w.mu.Lock()
	err = f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.w.initialWindow
			c.w.initialWindow = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > 1<<31-1 {
					return connError{code: errFlowControl, why: "INITIAL_WINDOW_SIZE grows a stream's window past 2^31-1"}
				}
			}
		case http2.SettingMaxFrameSize:
			c.w.maxFrame = int(s.Val)
		case http2.SettingHeaderTableSize:
			c.w.enc.SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	c.smu.Unlock()
	if err != nil {
		c.w.mu.Unlock()
		return err
	}
	_ = c.fr.WriteSettingsAck()
	c.w.cond.Broadcast()
	return c.queuedLocked()
}

// queueControl queues a control frame the reader answers with. A client
// that sends them without reading the answers is told to calm down and
// loses the connection once twice MaxQueued is waiting.
func (c *conn) queueControl(write func() error) error {
	c.w.mu.Lock()
	_ = write()
	return c.queuedLocked()
}

// queuedLocked writes what is queued, or ends the connection when a
// client that does not read has let too much queue; mu is unlocked.
func (c *conn) queuedLocked() error {
	if len(c.w.buf) > 2*c.s.opts.MaxQueued {
		c.w.mu.Unlock()
		return connError{code: errCalm, why: "control frames queued to a client that does not read them"}
	}
	c.w.flushLocked()
	return nil
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	c.w.mu.Lock()
	if f.StreamID == 0 {
		if c.w.connWindow+inc > 1<<31-1 {
			c.w.mu.Unlock()
			return connError{code: errFlowControl, why: "connection window past 2^31-1"}
		}
		c.w.connWindow += inc
		c.w.cond.Broadcast()
		c.w.mu.Unlock()
		return nil
	}
	c.w.mu.Unlock()
	st, state := c.lookup(f.StreamID)
	if state == stateIdle {
		return connError{code: errProtocol, why: "WINDOW_UPDATE on an idle stream"}
	}
	if st == nil {
		return nil // closed: allowed for a while after (RFC 9113 section 6.9)
	}
	c.w.mu.Lock()
	if st.sendWindow+inc > 1<<31-1 {
		c.w.mu.Unlock()
		c.streamError(f.StreamID, errFlowControl)
		return nil
	}
	st.sendWindow += inc
	c.w.cond.Broadcast()
	c.w.mu.Unlock()
	return nil
}

func (c *conn) onReset(f *http2.RSTStreamFrame) error {
	st, state := c.lookup(f.StreamID)
	if state == stateIdle {
		return connError{code: errProtocol, why: "RST_STREAM on an idle stream"}
	}
	if st != nil {
		st.resetByPeer()
	}
	return nil
}

type streamState int

const (
	stateIdle streamState = iota
	stateKnown
	stateClosed
)

// lookup finds a stream the client opened: known (in the map), closed
// (opened before and gone), or idle (never opened).
func (c *conn) lookup(id uint32) (*stream, streamState) {
	c.smu.Lock()
	st := c.streams[id]
	c.smu.Unlock()
	switch {
	case st != nil:
		return st, stateKnown
	case id <= c.maxClientID.Load():
		return nil, stateClosed
	}
	return nil, stateIdle
}

func (c *conn) onData(f *http2.DataFrame) error {
	id, n := f.StreamID, int64(f.Length)
	if c.recvAvail.Add(-n) < 0 {
		return connError{code: errFlowControl, why: "DATA past the connection's window"}
	}
	st, state := c.lookup(id)
	switch {
	case state == stateIdle:
		return connError{code: errProtocol, why: "DATA on an idle stream"}
	case st == nil || st.remoteClosed.Load() || st.reset.Load():
		// Closed, half-closed (remote) or reset: nothing reads it, and
		// its window goes back to the connection at once. What comes
		// after a reset of ours is discarded (RFC 9113 section 5.1).
		c.credit(nil, n)
		c.consumed(len(f.Data()))
		if st != nil && st.reset.Load() && !st.peerReset.Load() || st == nil && c.wasResetByUs(id) {
			return nil
		}
		c.streamError(id, errStreamClosed)
		return nil
	}
	if st.recvAvail.Add(-n) < 0 {
		c.credit(nil, n)
		c.consumed(len(f.Data()))
		c.streamError(id, errFlowControl)
		return nil
	}
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		c.credit(st, pad) // padding is flow controlled but not delivered
	}
	st.received += int64(len(data))
	if st.declared >= 0 && (st.received > st.declared || f.StreamEnded() && st.received != st.declared) {
		c.credit(nil, int64(len(data)))
		c.consumed(len(data))
		c.streamError(id, errProtocol)
		return nil
	}
	if f.StreamEnded() {
		// Before the data is handed over: a handler that answers on it
		// then finds the stream half-closed, and its END_STREAM closes
		// the stream (noteEnded).
		st.remoteClosed.Store(true)
	}
	if len(data) > 0 && !st.body.write(data) {
		c.credit(nil, int64(len(data))) // the handler closed the body
		c.consumed(len(data))
	}
	if f.StreamEnded() {
		st.body.closeWith(io.EOF, nil)
	}
	return nil
}

// consumed reports n bytes of request bodies taken by a handler or
// dropped (byteCounter).
func (c *conn) consumed(n int) {
	if c.bytes != nil && n > 0 {
		c.bytes.Received(n)
	}
}

// credit gives n bytes read by a handler (or dropped) back to the client:
// to the connection's window, and to st's while it still receives, each
// in a WINDOW_UPDATE once a quarter of the window has gathered.
func (c *conn) credit(st *stream, n int64) {
	if n <= 0 {
		return
	}
	var connInc, streamInc int64
	if u := c.unacked.Add(n); u >= int64(c.s.opts.ConnWindow)/4 {
		if c.unacked.CompareAndSwap(u, 0) {
			connInc = u
			c.recvAvail.Add(u)
		}
	}
	if st != nil && !st.remoteClosed.Load() && !st.reset.Load() {
		if u := st.unacked.Add(n); u >= int64(c.s.opts.StreamWindow)/4 {
			if st.unacked.CompareAndSwap(u, 0) {
				streamInc = u
				st.recvAvail.Add(u)
			}
		}
	}
	if connInc == 0 && streamInc == 0 {
		return
	}
	c.w.mu.Lock()
	if connInc > 0 {
		_ = c.fr.WriteWindowUpdate(0, uint32(connInc))
	}
	if streamInc > 0 {
		_ = c.fr.WriteWindowUpdate(st.id, uint32(streamInc))
	}
	c.w.flushLocked()
}

// streamError resets stream id with code, and ends its handler's request.
func (c *conn) streamError(id uint32, code http2.ErrCode) {
	if st, _ := c.lookup(id); st != nil {
		st.resetLocal()
	}
	c.smu.Lock()
	c.noteResetLocked(id)
	c.smu.Unlock()
	c.w.mu.Lock()
	_ = c.fr.WriteRSTStream(id, code)
	c.w.flushLocked()
}

// goAway tells the client the last stream served and stops taking new
// ones; graceful leaves the connection to close when its last stream
// ends, else the caller closes it.
func (c *conn) goAway(code http2.ErrCode, graceful bool) {
	c.goAwayDebug(code, graceful, nil)
}

// goAwayDebug is goAway with debug data for the client.
func (c *conn) goAwayDebug(code http2.ErrCode, graceful bool, debug []byte) {
	c.smu.Lock()
	already := c.goingAway
	c.goingAway = true
	idle := c.active == 0
	c.smu.Unlock()
	if !already {
		c.w.mu.Lock()
		_ = c.fr.WriteGoAway(c.maxClientID.Load(), code, debug)
		c.w.flushLocked()
	}
	if graceful && idle {
		c.w.waitWritten()
		c.close(nil)
	}
}

// drainNotice asks the client to open no more streams, once.
func (c *conn) drainNotice() {
	c.w.mu.Lock()
	if !c.noticeSent {
		c.noticeSent = true
		_ = c.fr.WriteGoAway(1<<31-1, ErrCodeNo, nil)
	}
	c.w.flushLocked()
}

// close ends the connection: the socket, the handlers' contexts and
// bodies, and the writers waiting for a window.
func (c *conn) close(err error) {
	c.smu.Lock()
	if c.closed {
		c.smu.Unlock()
		return
	}
	c.closed = true
	streams := make([]*stream, 0, len(c.streams))
	for _, st := range c.streams {
		streams = append(streams, st)
	}
	c.smu.Unlock()
	if err == nil {
		err = errConnClosed
	}
	for _, st := range streams {
		st.ctx.cancel()
		st.body.closeWith(errConnClosed, nil)
	}
	c.w.mu.Lock()
	if c.w.err == nil {
		c.w.err = errConnClosed
	}
	c.w.cond.Broadcast()
	writing := c.w.writing
	c.w.mu.Unlock()
	if writing {
		// Whatever the writing goroutine is sending is cut short.
		_ = c.nc.SetWriteDeadline(time.Now())
	}
	_ = c.nc.Close()
	if err != errConnClosed && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		c.s.opts.Log.Debug("http2 connection ended", "peer", c.peer, "error", err.Error())
	}
}

var errConnClosed = errors.New("http2: connection closed")

// armIdle starts the idle timer while no stream is active.
func (c *conn) armIdle() {
	d := c.s.opts.IdleTimeout
	if d <= 0 {
		return
	}
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.active > 0 || c.closed {
		return
	}
	if c.idle == nil {
		c.idle = time.AfterFunc(d, c.idleFired)
		return
	}
	c.idle.Reset(d)
}

func (c *conn) idleFired() {
	c.smu.Lock()
	idle := c.active == 0
	c.smu.Unlock()
	if idle {
		c.goAway(ErrCodeNo, true)
	}
}

// checkAlive pings a connection that sent nothing for PingAfter, and
// closes it when the previous ping went unanswered for PingTimeout.
func (c *conn) checkAlive() {
	seen := c.frames.Load()
	if c.pingSent.Load() {
		c.close(errors.New("http2: keepalive ping not answered"))
		return
	}
	next := c.s.opts.PingAfter
	if c.lastSeen.Swap(seen) == seen {
		c.pingSent.Store(true)
		c.w.mu.Lock()
		_ = c.fr.WritePing(false, [8]byte{'e', 'n', 'v', 'g', 'a', 't', 'e'})
		c.w.flushLocked()
		next = c.s.opts.PingTimeout
	}
	c.smu.Lock()
	if !c.closed {
		c.keepalive.Reset(next)
	}
	c.smu.Unlock()
}
