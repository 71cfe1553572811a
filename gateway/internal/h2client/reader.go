package h2client

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// reader is the reader goroutine's own state: the framer, its buffer, and
// the streams to wake once no complete frame is left in the buffer, so a
// response that arrived in one read (headers, message, trailers) wakes its
// caller once. Header blocks are decoded here rather than by the framer,
// into fields reused from block to block.
type reader struct {
	fr      *http2.Framer
	src     bufferedConn // what fr reads: a buffer grow may replace
	nc      fillCounter
	pending []*stream
	recv    recvWindow    // the connection window this client grants
	frames  atomic.Uint64 // frames read, for the keepalive

	hdec    *hpack.Decoder
	hfields []hpack.HeaderField
	hsize   int
	htrunc  bool
	hblock  []byte // a block whose CONTINUATION frames are still coming
	hstream uint32
	hend    bool
	hopen   bool // a header block's CONTINUATION frames are still coming

	// The stream the last DATA frame was for: a stream's frames come in
	// runs, and finding it in the connection's map takes the
	// connection's lock. A stream that finished since ignores its data;
	// an id not found is looked up again next time (a stream may open
	// under it).
	lastStream *stream
}

// A connection's read buffer starts small and grows once a frame larger
// than it comes, or once reads filled it busyFills times: 3,000 upstream
// connections of environments that carry small calls held 96 MB in 32 KiB
// buffers, while one that carries large messages reads two 16 KiB frames
// a system call, as before, and one that streams small messages (a frame
// each, from gRPC's servers) reads eight times as much a system call as
// in the small buffer. It grows when nothing is left in the small one,
// which for small frames is at the end of a burst.
const (
	initialReadBuffer = 4 << 10
	largeReadBuffer   = 32 << 10
	busyFills         = 8
)

// fillCounter is the connection as the read buffer sees it: it counts the
// reads that filled what they were given (more was waiting), up to
// busyFills.
type fillCounter struct {
	net.Conn
	full   int
	onRead func(int) // Options.OnRead
}

func (f *fillCounter) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	if n == len(p) && f.full < busyFills {
		f.full++
	}
	if f.onRead != nil && n > 0 {
		f.onRead(n)
	}
	return n, err
}

// bufferedConn is the framer's source: the reader's current buffer.
type bufferedConn struct{ br *bufio.Reader }

func (b *bufferedConn) Read(p []byte) (int, error) { return b.br.Read(p) }

func (r *reader) init(nc net.Conn, onRead func(int)) {
	r.nc.Conn, r.nc.onRead = nc, onRead
	r.src.br = bufio.NewReaderSize(&r.nc, initialReadBuffer)
	r.fr = http2.NewFramer(nil, &r.src)
	// A DATA frame is handled before the next is read (its bytes are
	// copied), so one DataFrame serves them all: an allocation a frame was
	// half of what a small-message stream's reader allocated.
	r.fr.SetReuseFrames()
	r.fr.SetMaxReadFrameSize(defaultFrame) // what SETTINGS left at its default allows
	r.hdec = hpack.NewDecoder(4096, r.emitField)
	r.hdec.SetMaxStringLength(maxHeaderList)
	r.recv = recvWindow{left: connWindow}
}

// grow gives the connection the large read buffer once a frame larger
// than the small one came, or reads filled it busyFills times, and
// nothing is left in it; reader only.
func (r *reader) grow(frame uint32) {
	br := r.src.br
	if br.Size() >= largeReadBuffer || br.Buffered() != 0 {
		return
	}
	if frame > initialReadBuffer || r.nc.full >= busyFills {
		r.src.br = bufio.NewReaderSize(&r.nc, largeReadBuffer)
	}
}

// wakeLater queues s to be notified; reader only.
func (r *reader) wakeLater(s *stream) {
	if n := len(r.pending); n == 0 || r.pending[n-1] != s {
		r.pending = append(r.pending, s)
	}
}

// wakePending notifies the queued streams unless another whole frame is
// already buffered, which the reader handles first.
func (r *reader) wakePending() {
	if len(r.pending) == 0 {
		return
	}
	if n := r.src.br.Buffered(); n >= 9 {
		h, _ := r.src.br.Peek(9)
		if n >= 9+(int(h[0])<<16|int(h[1])<<8|int(h[2])) {
			return
		}
	}
	for i, s := range r.pending {
		s.notify()
		r.pending[i] = nil
	}
	r.pending = r.pending[:0]
}

func (c *conn) readLoop() {
	defer close(c.done)
	defer c.stopKeepalive()
	defer func() {
		for _, s := range c.pending {
			s.notify()
		}
	}()
	for {
		c.wakePending()
		if ok, err := c.bufferedData(); ok {
			if err != nil {
				c.fail(err)
				return
			}
			continue
		}
		f, err := c.fr.ReadFrame()
		c.frames.Add(1)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if s := c.stream(se.StreamID); s != nil {
					s.fail(status.New(codes.Internal, fmt.Sprintf("upstream stream error: %v", se)), se.Code)
				}
				continue
			}
			if d := c.fr.ErrorDetail(); d != nil {
				// The framer's connection errors name only their code.
				err = fmt.Errorf("%w (%v)", err, d)
			}
			c.fail(fmt.Errorf("read: %w", err))
			return
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			c.grow(f.Length)
			err = c.onData(f.StreamID, f.Data(), int64(f.Length), f.StreamEnded())
		case *http2.HeadersFrame:
			c.hstream, c.hend = f.StreamID, f.StreamEnded()
			c.hopen = !f.HeadersEnded()
			if f.HeadersEnded() {
				err = c.decodeHeaders(f.HeaderBlockFragment())
			} else {
				c.hblock = append(c.hblock[:0], f.HeaderBlockFragment()...)
			}
		case *http2.ContinuationFrame:
			// The framer checks that it continues the block before.
			c.hopen = !f.HeadersEnded()
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
				kind := Reset
				if f.ErrCode == http2.ErrCodeRefusedStream {
					kind = Refused
				}
				s.finishAs(st, kind, true)
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
			c.onWindowUpdateLocked(f.StreamID, f.Increment)
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

// bufferedData handles a DATA frame that is whole in the read buffer
// straight from the buffer: the framer would copy its payload into a
// buffer of its own first, and for a stream of small messages that copy
// and the framer's work were a tenth of the gateway's CPU. So too a whole
// HEADERS frame that is a header block by itself (END_HEADERS), neither
// padded nor with a priority, as gRPC's servers send every one: the framer
// makes an object of each, two per unary call. It leaves to the framer
// every frame it does not take whole, and the frames whose errors the
// framer reports: padded, too large, on stream 0, or inside a header
// block (only CONTINUATION may come there, RFC 9113 section 6.10); the
// framer's own check of that order (a CONTINUATION must follow an open
// block) stays true, since no frame taken here leaves one open. It
// reports whether it took a frame, and the connection's error if that
// frame broke the connection's flow control or its HPACK state.
func (c *conn) bufferedData() (bool, error) {
	br := c.src.br
	if c.hopen || br.Buffered() < frameHeaderLen {
		return false, nil
	}
	h, _ := br.Peek(frameHeaderLen)
	length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	flags := http2.Flags(h[4])
	id := binary.BigEndian.Uint32(h[5:]) & (1<<31 - 1)
	if id == 0 || length > defaultFrame || br.Buffered() < frameHeaderLen+length {
		return false, nil
	}
	typ := http2.FrameType(h[3])
	switch {
	case typ == http2.FrameData && !flags.Has(http2.FlagDataPadded):
	case typ == http2.FrameHeaders && flags&(http2.FlagHeadersPadded|http2.FlagHeadersPriority) == 0 && flags.Has(http2.FlagHeadersEndHeaders):
	default:
		return false, nil
	}
	f, _ := br.Peek(frameHeaderLen + length)
	_, _ = br.Discard(len(f)) // f stays valid: nothing is read into the buffer before it is used (the HPACK decoder copies what it keeps)
	c.frames.Add(1)
	if typ == http2.FrameHeaders {
		c.hstream, c.hend = id, flags.Has(http2.FlagHeadersEndStream)
		return true, c.decodeHeaders(f[frameHeaderLen:])
	}
	c.grow(uint32(length))
	return true, c.onData(id, f[frameHeaderLen:], int64(length), flags.Has(http2.FlagDataEndStream))
}

// frameHeaderLen is the length of an HTTP/2 frame header.
const frameHeaderLen = 9

// onData takes a DATA frame's payload (data, without padding; n bytes of
// flow control with it) for stream id.
func (c *conn) onData(id uint32, data []byte, n int64, end bool) error {
	if !c.recv.take(n) {
		return errors.New("the upstream sent more than the connection's flow-control window")
	}
	if g := c.recv.consumed(n, connWindow); g > 0 {
		c.windowUpdate(0, g)
	}
	s := c.lastStream
	if s == nil || s.id != id {
		s = c.stream(id)
		c.lastStream = s
	}
	if s != nil {
		s.onData(data, n, end)
	}
	return nil
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

func (r *reader) emitField(f hpack.HeaderField) {
	if r.hsize += len(f.Name) + len(f.Value) + 32; r.hsize > maxHeaderList {
		r.htrunc = true
		return
	}
	r.hfields = append(r.hfields, f)
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	var tableSize *uint32
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.maxFrame.Store(int32(s.Val))
		case http2.SettingMaxConcurrentStreams:
			c.mu.Lock()
			more := s.Val > c.maxStreams
			c.maxStreams = s.Val
			c.broadcastLocked()
			c.mu.Unlock()
			if more {
				c.onRoom()
			}
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			c.onInitialWindowLocked(s.Val)
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
		if s.finishAs(st, Refused, true) {
			s.notify()
		}
	}
	c.mu.Lock()
	if c.active == 0 && !c.closed {
		c.closeLocked()
	}
	c.mu.Unlock()
}
