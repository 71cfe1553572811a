package h2client

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/envgate/envgate/gateway/internal/hpackmemo"
	"github.com/envgate/envgate/gateway/internal/tlsbatch"
)

// writer is the outgoing half of a connection: frames are written into bw
// under wmu by whoever has them to send (callers, the reader for its
// acknowledgements), and the flusher goroutine sends what has gathered.
type writer struct {
	writeTimeout time.Duration
	maxFrame     atomic.Int32 // the upstream's SETTINGS_MAX_FRAME_SIZE

	wmu          sync.Mutex
	bw           *bytes.Buffer // frames written, not yet taken by the flusher
	drained      chan struct{} // made by writers over highWater, closed by the flusher
	henc         *hpackmemo.Encoder
	hbuf         bytes.Buffer
	fh           [9]byte
	flushPending bool          // the flusher has been told
	flushCh      chan struct{} // tells the flusher

	// The flusher's only.
	spare         *bytes.Buffer // the buffer writers get next
	writeDeadline time.Time     // the deadline set on the connection
}

// initialWriteBuffer is what each of a connection's two write buffers
// starts with; a buffer grows to what the connection gathers between two
// flushes, and keeps it. Starting at 32 KiB, 3,000 upstream connections
// (1,000 environments of 3 endpoints, make bench's environment rows) held
// 208 MB of write buffers whatever their traffic; a connection with a call
// now and then needs a few KiB, and a busy one reaches its size within
// its first few flushes.
const initialWriteBuffer = 4 << 10

func (w *writer) init(writeTimeout time.Duration) {
	w.writeTimeout = writeTimeout
	w.bw = bytes.NewBuffer(make([]byte, 0, initialWriteBuffer))
	w.spare = bytes.NewBuffer(make([]byte, 0, initialWriteBuffer))
	w.flushCh = make(chan struct{}, 1)
	w.henc = hpackmemo.New(&w.hbuf, 32) // a request's 8 or so fields; upstream connections are few
	w.maxFrame.Store(defaultFrame)
}

func (w *writer) frameHeader(length int, t http2.FrameType, flags http2.Flags, id uint32) {
	h := w.fh[:]
	h[0], h[1], h[2] = byte(length>>16), byte(length>>8), byte(length)
	h[3], h[4] = byte(t), byte(flags)
	binary.BigEndian.PutUint32(h[5:], id)
	_, _ = w.bw.Write(h)
}

func (w *writer) writeSettings(s ...http2.Setting) {
	w.frameHeader(6*len(s), http2.FrameSettings, 0, 0)
	var b [6]byte
	for _, x := range s {
		binary.BigEndian.PutUint16(b[:2], uint16(x.ID))
		binary.BigEndian.PutUint32(b[2:], x.Val)
		_, _ = w.bw.Write(b[:])
	}
}

func (w *writer) writeWindowUpdate(id uint32, inc uint32) {
	w.frameHeader(4, http2.FrameWindowUpdate, 0, id)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], inc)
	_, _ = w.bw.Write(b[:])
}

func (w *writer) writeRST(id uint32, code http2.ErrCode) {
	w.frameHeader(4, http2.FrameRSTStream, 0, id)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(code))
	_, _ = w.bw.Write(b[:])
}

// writeHeaderBlock writes hbuf as HEADERS and as many CONTINUATION frames
// as the upstream's frame size needs.
func (w *writer) writeHeaderBlock(id uint32) {
	block := w.hbuf.Bytes()
	max := int(w.maxFrame.Load())
	t := http2.FrameHeaders
	for {
		n := min(len(block), max)
		var flags http2.Flags
		if n == len(block) {
			flags = http2.FlagHeadersEndHeaders // same bit as CONTINUATION's
		}
		w.frameHeader(n, t, flags, id)
		_, _ = w.bw.Write(block[:n])
		block = block[n:]
		if len(block) == 0 {
			return
		}
		t = http2.FrameContinuation
	}
}

func (w *writer) lockWrite() { w.wmu.Lock() }

// unlockWrite releases the write lock with frames written, for the flusher
// to send.
func (w *writer) unlockWrite() {
	if !w.flushPending {
		w.flushPending = true
		select {
		case w.flushCh <- struct{}{}:
		default:
		}
	}
	w.wmu.Unlock()
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
				err = c.send(out.Bytes())
			}
			out.Reset()
			if out.Cap() > 2*highWater {
				out = bytes.NewBuffer(make([]byte, 0, initialWriteBuffer))
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

// send writes p, failing only when a write moved no byte before its
// deadline: one that timed out having moved some goes on. Over TLS the
// records go in as few system calls as the socket takes them (tlsbatch),
// where crypto/tls would write each at once and could not go on after a
// timeout. Flusher only.
func (c *conn) send(p []byte) error {
	if c.batch != nil {
		return c.batch.WriteThrough(c.nc, p, c.refreshWriteDeadline)
	}
	return tlsbatch.WriteAll(c.nc, p, c.refreshWriteDeadline)
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
		case <-s.doneCh():
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

// the frame size allow, waiting for the upstream to grant more as needed.
func (c *conn) writeData(s *stream, bufs [][]byte, total int) error {
	for total > 0 {
		c.mu.Lock()
		n := c.reserveLocked(s, total)
		if n == 0 {
			if c.closed {
				c.mu.Unlock()
				return errStreamDone
			}
			ch := c.waitLocked()
			c.mu.Unlock()
			select {
			case <-ch:
			case <-s.doneCh():
				return errStreamDone
			}
			continue
		}
		c.mu.Unlock()

		c.lockWrite()
		if !c.waitDrainedLocked(s) || s.sendClosed {
			c.wmu.Unlock()
			return errStreamDone
		}
		max := int(c.maxFrame.Load())
		for left := n; left > 0; {
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
		total -= n
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
