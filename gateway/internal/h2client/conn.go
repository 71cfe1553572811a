package h2client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Flow-control windows this client grants. The connection window is given
// back as data arrives, so only the stream windows bound what a connection
// holds for callers that read slowly.
const (
	streamWindow = 256 << 10
	connWindow   = 16 << 20
	// defaultFrame is HTTP/2's initial maximum frame size.
	defaultFrame = 16384
	// maxHeaderList bounds a response's header block, as gRPC's default.
	maxHeaderList = 16 << 20
	// maxStreamID is the last client stream ID; the connection is replaced
	// before it runs out.
	maxStreamID = 1<<31 - 1
)

// errUnusable means the connection takes no new streams; the caller picks
// another.
var errUnusable = errors.New("connection takes no new streams")

// conn is one HTTP/2 connection to one endpoint. Callers write their frames
// into the connection's buffer themselves under wmu; a flusher goroutine
// takes what has gathered and sends it, so the frames of many calls share
// one system call (on loopback a write costs more than all the framing
// around it). One reader goroutine dispatches what arrives.
//
// Locks: wmu guards the outgoing buffer, the HPACK encoder and each
// stream's sendClosed/rstSent; mu guards streams, windows and state. When
// both are held, wmu is taken first. Neither is held across network I/O:
// the flusher swaps the buffer out under wmu and writes it without any
// lock, under a write deadline, so an upstream that stops reading cannot
// keep the reader from queueing WINDOW_UPDATE and PING acknowledgements,
// and fails the connection after writeTimeout instead of wedging it.
type conn struct {
	addr         string
	nc           net.Conn
	writeTimeout time.Duration

	wmu           sync.Mutex
	bw            *bytes.Buffer // frames written, not yet taken by the flusher
	spare         *bytes.Buffer // the flusher's only: the buffer writers get next
	writeDeadline time.Time     // the flusher's only: the deadline set on nc
	drained       chan struct{} // made by writers over highWater, closed by the flusher
	henc          *hpack.Encoder
	hbuf          bytes.Buffer
	fh            [9]byte
	flushPending  bool          // under wmu: the flusher has been told
	flushCh       chan struct{} // tells the flusher

	// The reader goroutine's only: the framer, its buffer, and the streams
	// to wake once no complete frame is left in the buffer, so a response
	// that arrived in one read (headers, message, trailers) wakes its
	// caller once.
	fr      *http2.Framer
	br      *bufio.Reader
	pending []*stream
	// Header blocks are decoded here rather than by the framer, into
	// fields reused from block to block.
	hdec    *hpack.Decoder
	hfields []hpack.HeaderField
	hsize   int
	htrunc  bool
	hblock  []byte // a block whose CONTINUATION frames are still coming
	hstream uint32
	hend    bool

	peerMaxFrame atomic.Int32
	unusable     atomic.Bool // draining or closed: no new streams
	answered     atomic.Bool // the upstream sent headers on some stream

	mu          sync.Mutex
	streams     map[uint32]*stream
	nextID      uint32
	active      int
	maxStreams  uint32
	sendWin     int64 // connection-level window the upstream granted
	peerInitWin int64
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
func dial(ctx context.Context, addr string, d func(context.Context, string) (net.Conn, error), writeTimeout time.Duration) (*conn, error) {
	nc, err := d(ctx, addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := &conn{
		addr: addr, nc: nc,
		bw:           bytes.NewBuffer(make([]byte, 0, 32<<10)),
		spare:        bytes.NewBuffer(make([]byte, 0, 32<<10)),
		writeTimeout: writeTimeout,
		streams:      map[uint32]*stream{},
		nextID:       1,
		maxStreams:   ^uint32(0),
		sendWin:      65535,
		peerInitWin:  65535,
		gone:         make(chan struct{}),
		done:         make(chan struct{}),
		flushCh:      make(chan struct{}, 1),
	}
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.peerMaxFrame.Store(defaultFrame)
	c.br = bufio.NewReaderSize(nc, 32<<10)
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.SetMaxReadFrameSize(defaultFrame) // what SETTINGS left at its default allows
	c.hdec = hpack.NewDecoder(4096, c.emitField)
	c.hdec.SetMaxStringLength(maxHeaderList)

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

// start runs the connection's reader and flusher, owned by wg; exited is
// called once both have ended, after the connection closed.
func (c *conn) start(wg *sync.WaitGroup, exited func()) {
	var both sync.WaitGroup
	both.Go(c.readLoop)
	both.Go(c.flushLoop)
	wg.Go(func() {
		both.Wait()
		exited()
	})
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

func (c *conn) frameHeader(length int, t http2.FrameType, flags http2.Flags, id uint32) {
	h := c.fh[:]
	h[0], h[1], h[2] = byte(length>>16), byte(length>>8), byte(length)
	h[3], h[4] = byte(t), byte(flags)
	binary.BigEndian.PutUint32(h[5:], id)
	_, _ = c.bw.Write(h)
}

func (c *conn) writeSettings(s ...http2.Setting) {
	c.frameHeader(6*len(s), http2.FrameSettings, 0, 0)
	var b [6]byte
	for _, x := range s {
		binary.BigEndian.PutUint16(b[:2], uint16(x.ID))
		binary.BigEndian.PutUint32(b[2:], x.Val)
		_, _ = c.bw.Write(b[:])
	}
}

func (c *conn) writeWindowUpdate(id uint32, inc uint32) {
	c.frameHeader(4, http2.FrameWindowUpdate, 0, id)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], inc)
	_, _ = c.bw.Write(b[:])
}

func (c *conn) writeRST(id uint32, code http2.ErrCode) {
	c.frameHeader(4, http2.FrameRSTStream, 0, id)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(code))
	_, _ = c.bw.Write(b[:])
}

// writeHeaderBlock writes hbuf as HEADERS and as many CONTINUATION frames
// as the upstream's frame size needs.
func (c *conn) writeHeaderBlock(id uint32) {
	block := c.hbuf.Bytes()
	max := int(c.peerMaxFrame.Load())
	t := http2.FrameHeaders
	for {
		n := min(len(block), max)
		var flags http2.Flags
		if n == len(block) {
			flags = http2.FlagHeadersEndHeaders // same bit as CONTINUATION's
		}
		c.frameHeader(n, t, flags, id)
		_, _ = c.bw.Write(block[:n])
		block = block[n:]
		if len(block) == 0 {
			return
		}
		t = http2.FrameContinuation
	}
}

func (c *conn) lockWrite() { c.wmu.Lock() }

// unlockWrite releases the write lock with frames written, for the flusher
// to send.
func (c *conn) unlockWrite() {
	if !c.flushPending {
		c.flushPending = true
		select {
		case c.flushCh <- struct{}{}:
		default:
		}
	}
	c.wmu.Unlock()
}

// highWater bounds the frames queued for the network: a writer of DATA
// waits while more than this is queued, so a slow upstream holds back the
// call's messages (and through flow control, the client) instead of
// growing the buffer.
const highWater = 256 << 10

// flushLoop sends the written frames, yielding once first so the writers
// that are ready to run add theirs to the same system call, as gRPC's own
// writer does. The flush stays pending while a write is in progress, so
// frames written meanwhile do not wake the flusher one by one: they go out
// together in the next round, as they did when the write held the lock
// (without that, the 100 B bench cost 20% more CPU in writes). It ends with
// the reader, which ends when the connection closes.
func (c *conn) flushLoop() {
	for {
		select {
		case <-c.flushCh:
		case <-c.done:
			return
		}
		for more := true; more; {
			runtime.Gosched()
			c.wmu.Lock()
			out := c.bw
			c.bw = c.spare
			if c.drained != nil {
				close(c.drained)
				c.drained = nil
			}
			c.wmu.Unlock()
			var err error
			if out.Len() > 0 {
				c.refreshWriteDeadline()
				_, err = c.nc.Write(out.Bytes())
			}
			out.Reset()
			if out.Cap() > 2*highWater {
				out = bytes.NewBuffer(make([]byte, 0, 32<<10))
			}
			c.spare = out
			if err != nil {
				c.fail(fmt.Errorf("write: %w", err))
				return
			}
			c.wmu.Lock()
			if more = c.bw.Len() > 0; !more {
				c.flushPending = false
			}
			c.wmu.Unlock()
		}
	}
}

// refreshWriteDeadline moves the write deadline to writeTimeout from now
// once less than half of it is left, so a write that makes no progress
// fails after between half and all of writeTimeout; moving it on every
// flush would cost a timer update per write. Flusher only.
func (c *conn) refreshWriteDeadline() {
	now := time.Now()
	if c.writeDeadline.Sub(now) >= c.writeTimeout/2 {
		return
	}
	c.writeDeadline = now.Add(c.writeTimeout)
	_ = c.nc.SetWriteDeadline(c.writeDeadline)
}

// waitDrainedLocked waits, with wmu held on entry and on return, until the
// queued frames are under highWater; false when s ended or the connection
// closed meanwhile.
func (c *conn) waitDrainedLocked(s *stream) bool {
	for c.bw.Len() >= highWater {
		if c.drained == nil {
			c.drained = make(chan struct{})
		}
		ch := c.drained
		c.wmu.Unlock()
		ended := false
		select {
		case <-ch:
		case <-s.done:
			ended = true
		case <-c.done:
			ended = true
		}
		c.wmu.Lock()
		if ended {
			return false
		}
	}
	return true
}

// open registers s and sends its request headers.
func (c *conn) open(ctx context.Context, s *stream) error {
	c.mu.Lock()
	for c.active >= int(c.maxStreams) && !c.draining && !c.closed {
		// The upstream's concurrent stream limit: wait for a slot, as
		// gRPC does.
		ch := c.waitLocked()
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		c.mu.Lock()
	}
	if c.draining || c.closed {
		c.mu.Unlock()
		return errUnusable
	}
	c.active++
	c.mu.Unlock()

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
	s.sendWin = c.peerInitWin // under the lock SETTINGS change it under
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
// the frame size allow, waiting for the upstream to grant more as needed.
func (c *conn) writeData(s *stream, bufs [][]byte, total int) error {
	for total > 0 {
		c.mu.Lock()
		n := int64(total)
		n = min(n, s.sendWin, c.sendWin)
		if n <= 0 {
			if c.closed {
				c.mu.Unlock()
				return errStreamDone
			}
			ch := c.waitLocked()
			c.mu.Unlock()
			select {
			case <-ch:
			case <-s.done:
				return errStreamDone
			}
			continue
		}
		s.sendWin -= n
		c.sendWin -= n
		c.mu.Unlock()

		c.lockWrite()
		if !c.waitDrainedLocked(s) || s.sendClosed {
			c.wmu.Unlock()
			return errStreamDone
		}
		max := int(c.peerMaxFrame.Load())
		for left := int(n); left > 0; {
			m := min(left, max)
			c.frameHeader(m, http2.FrameData, 0, s.id)
			for w := m; w > 0; {
				k := min(w, len(bufs[0]))
				_, _ = c.bw.Write(bufs[0][:k])
				bufs[0] = bufs[0][k:]
				if len(bufs[0]) == 0 {
					bufs = bufs[1:]
				}
				w -= k
			}
			left -= m
		}
		c.unlockWrite()
		total -= int(n)
	}
	return nil
}

// closeSend half-closes s.
func (c *conn) closeSend(s *stream) {
	c.lockWrite()
	if s.sendClosed {
		c.wmu.Unlock()
		return
	}
	s.sendClosed = true
	c.frameHeader(0, http2.FrameData, http2.FlagDataEndStream, s.id)
	c.unlockWrite()
}

// reset sends RST_STREAM for s, once.
func (c *conn) reset(s *stream, code http2.ErrCode) {
	c.lockWrite()
	if s.rstSent {
		c.wmu.Unlock()
		return
	}
	s.sendClosed, s.rstSent = true, true
	c.writeRST(s.id, code)
	c.unlockWrite()
}

// closeHalfOpen resets s with NO_ERROR if the upstream answered in full
// before the request was complete, as gRPC's transport does, so the
// stream does not stay open on the upstream's side.
func (c *conn) closeHalfOpen(s *stream) {
	c.lockWrite()
	if s.sendClosed {
		c.wmu.Unlock()
		return
	}
	s.sendClosed, s.rstSent = true, true
	c.writeRST(s.id, http2.ErrCodeNo)
	c.unlockWrite()
}

// windowUpdate grants the upstream inc more bytes on stream id (0: the
// connection).
func (c *conn) windowUpdate(id uint32, inc int64) {
	c.lockWrite()
	c.writeWindowUpdate(id, uint32(inc))
	c.unlockWrite()
}

// waitLocked returns a channel closed at the next change of windows,
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
	c.mu.Unlock()
	st := status.New(codes.Unavailable, fmt.Sprintf("upstream connection to %s lost: %v", c.addr, err))
	for _, s := range streams {
		if s.finish(st, nil, false) {
			s.notify()
		}
	}
}

// close ends the connection at once.
func (c *conn) close() { c.fail(errors.New("connection closed by envgate")) }

// remove forgets a finished stream.
func (c *conn) remove(s *stream) {
	c.mu.Lock()
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
		c.active--
		c.broadcastLocked()
		if c.draining && c.active == 0 && !c.closed {
			c.closeLocked()
		}
	}
	c.mu.Unlock()
}

func (c *conn) stream(id uint32) *stream {
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	return s
}

// wakeLater queues s to be notified; reader only.
func (c *conn) wakeLater(s *stream) {
	if n := len(c.pending); n == 0 || c.pending[n-1] != s {
		c.pending = append(c.pending, s)
	}
}

// wakePending notifies the queued streams unless another whole frame is
// already buffered, which the reader handles first.
func (c *conn) wakePending() {
	if len(c.pending) == 0 {
		return
	}
	if n := c.br.Buffered(); n >= 9 {
		h, _ := c.br.Peek(9)
		if n >= 9+(int(h[0])<<16|int(h[1])<<8|int(h[2])) {
			return
		}
	}
	for i, s := range c.pending {
		s.notify()
		c.pending[i] = nil
	}
	c.pending = c.pending[:0]
}

func (c *conn) readLoop() {
	defer close(c.done)
	defer func() {
		for _, s := range c.pending {
			s.notify()
		}
	}()
	recvUnacked := int64(0)
	for {
		c.wakePending()
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if s := c.stream(se.StreamID); s != nil {
					s.fail(status.New(codes.Internal, fmt.Sprintf("upstream stream error: %v", se)), se.Code)
				}
				continue
			}
			c.fail(fmt.Errorf("read: %w", err))
			return
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			n := int64(f.Length)
			if recvUnacked += n; recvUnacked >= connWindow/4 {
				c.windowUpdate(0, recvUnacked)
				recvUnacked = 0
			}
			if s := c.stream(f.StreamID); s != nil {
				s.onData(f.Data(), n, f.StreamEnded())
			}
		case *http2.HeadersFrame:
			c.hstream, c.hend = f.StreamID, f.StreamEnded()
			if f.HeadersEnded() {
				err = c.decodeHeaders(f.HeaderBlockFragment())
			} else {
				c.hblock = append(c.hblock[:0], f.HeaderBlockFragment()...)
			}
		case *http2.ContinuationFrame:
			// The framer checks that it continues the block before.
			if c.hblock = append(c.hblock, f.HeaderBlockFragment()...); len(c.hblock) > maxHeaderList {
				err = errors.New("header block over the size limit")
			} else if f.HeadersEnded() {
				err = c.decodeHeaders(c.hblock)
			}
		case *http2.RSTStreamFrame:
			if s := c.stream(f.StreamID); s != nil {
				st := resetStatus(f.ErrCode)
				if dl, ok := s.ctx.Deadline(); ok && f.ErrCode == http2.ErrCodeCancel && !dl.After(time.Now()) {
					// The upstream gave up at the deadline it was sent,
					// as gRPC's transport reads it.
					st = status.FromContextError(context.DeadlineExceeded)
				}
				s.finish(st, nil, true)
				c.wakeLater(s)
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := c.onSettings(f); err != nil {
					c.fail(err)
					return
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.lockWrite()
				c.frameHeader(8, http2.FramePing, http2.FlagPingAck, 0)
				_, _ = c.bw.Write(f.Data[:])
				c.unlockWrite()
			}
		case *http2.GoAwayFrame:
			c.onGoAway(f)
		case *http2.WindowUpdateFrame:
			c.mu.Lock()
			if f.StreamID == 0 {
				c.sendWin += int64(f.Increment)
			} else if s := c.streams[f.StreamID]; s != nil {
				s.sendWin += int64(f.Increment)
			}
			c.broadcastLocked()
			c.mu.Unlock()
		case *http2.PushPromiseFrame:
			err = errors.New("PUSH_PROMISE received with push disabled")
		}
		if err != nil {
			c.fail(err)
			return
		}
	}
}

// decodeHeaders decodes a whole header block, which keeps the connection's
// HPACK state in step even for a stream no longer known, and hands it to
// its stream.
func (c *conn) decodeHeaders(block []byte) error {
	c.hfields, c.hsize, c.htrunc = c.hfields[:0], 0, false
	if _, err := c.hdec.Write(block); err != nil {
		return fmt.Errorf("HPACK: %w", err)
	}
	if err := c.hdec.Close(); err != nil {
		return fmt.Errorf("HPACK: %w", err)
	}
	if s := c.stream(c.hstream); s != nil {
		if !c.answered.Load() {
			c.answered.Store(true)
		}
		s.onHeaders(c.hfields, c.hend, c.htrunc)
		c.wakeLater(s)
	}
	clear(c.hfields) // keep no strings alive
	if cap(c.hblock) > 64<<10 {
		c.hblock = nil
	}
	return nil
}

func (c *conn) emitField(f hpack.HeaderField) {
	if c.hsize += len(f.Name) + len(f.Value) + 32; c.hsize > maxHeaderList {
		c.htrunc = true
		return
	}
	c.hfields = append(c.hfields, f)
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	var tableSize *uint32
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame.Store(int32(s.Val))
		case http2.SettingMaxConcurrentStreams:
			c.mu.Lock()
			c.maxStreams = s.Val
			c.broadcastLocked()
			c.mu.Unlock()
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta := int64(s.Val) - c.peerInitWin
			c.peerInitWin = int64(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
			}
			c.broadcastLocked()
			c.mu.Unlock()
		case http2.SettingHeaderTableSize:
			v := s.Val
			tableSize = &v
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.lockWrite()
	if tableSize != nil {
		c.henc.SetMaxDynamicTableSizeLimit(*tableSize)
	}
	c.frameHeader(0, http2.FrameSettings, http2.FlagSettingsAck, 0)
	c.unlockWrite()
	return nil
}

// onGoAway stops new streams; the streams the upstream did not take fail
// with UNAVAILABLE, as never processed, and the rest finish.
func (c *conn) onGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.draining = true
	c.unusable.Store(true)
	c.goneOnce.Do(func() { close(c.gone) })
	var refused []*stream
	for id, s := range c.streams {
		if id > f.LastStreamID {
			refused = append(refused, s)
		}
	}
	c.mu.Unlock()
	st := status.New(codes.Unavailable, fmt.Sprintf("upstream %s is going away (GOAWAY %v) and did not take the call", c.addr, f.ErrCode))
	for _, s := range refused {
		if s.finish(st, nil, true) {
			s.notify()
		}
	}
	c.mu.Lock()
	if c.active == 0 && !c.closed {
		c.closeLocked()
	}
	c.mu.Unlock()
}
