package h2front

import (
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// writer queues a connection's frames and writes them. Whoever appends
// frames writes them unless another goroutine is writing already, which
// then takes them along: frames appended while a write is in progress go
// out together in the next one. The socket write happens outside mu, so
// the reader can always queue its control frames; what is queued is
// bounded (Options.MaxQueued).
type writer struct {
	nc      net.Conn
	timeout time.Duration

	mu   sync.Mutex // guards everything below, the framer's write side, and the send windows of conn and streams
	cond sync.Cond  // on mu: queue drained, window granted, stream or connection ended
	buf  []byte     // frames queued
	// spare is the buffer being written by the writing goroutine, or
	// the one it gave back; the two are swapped so neither is reallocated.
	spare   []byte
	writing bool
	err     error // the connection failed or ended: nothing more is written
	enc     *hpack.Encoder
	hbuf    headerBuf
	fr      *http2.Framer // writes append to buf (appendTo)

	// Send flow control and the peer's limits, from its SETTINGS.
	connWindow    int64
	initialWindow int64
	maxFrame      int
}

// headerBuf collects one header block from the encoder.
type headerBuf struct{ b []byte }

func (h *headerBuf) Write(p []byte) (int, error) { h.b = append(h.b, p...); return len(p), nil }

// appendTo is the framer's io.Writer: it queues the frame.
type appendTo struct{ w *writer }

func (a appendTo) Write(p []byte) (int, error) { a.w.buf = append(a.w.buf, p...); return len(p), nil }

// flushLocked writes what is queued, unless a write is in progress (that
// goroutine takes it along), and returns with mu unlocked.
func (w *writer) flushLocked() {
	if w.writing || len(w.buf) == 0 || w.err != nil {
		w.mu.Unlock()
		return
	}
	w.writing = true
	for len(w.buf) > 0 && w.err == nil {
		out := w.buf
		w.buf, w.spare = w.spare[:0], nil
		w.mu.Unlock()
		if w.timeout > 0 {
			_ = w.nc.SetWriteDeadline(time.Now().Add(w.timeout))
		}
		_, err := w.nc.Write(out)
		w.mu.Lock()
		if err != nil && w.err == nil {
			w.err = err
		}
		if cap(out) <= maxSpare {
			w.spare = out[:0]
		}
		w.cond.Broadcast() // the queue drained
	}
	w.writing = false
	failed := w.err
	w.mu.Unlock()
	if failed != nil {
		_ = w.nc.Close() // the reader then ends the connection
	}
}

// maxSpare is the largest buffer kept between writes: a burst larger than
// it is written and let go.
const maxSpare = 64 << 10

// dataHeader appends a DATA frame's header: the payload follows.
func (w *writer) dataHeader(id uint32, n int, end bool) {
	var flags byte
	if end {
		flags = byte(http2.FlagDataEndStream)
	}
	w.buf = append(w.buf, byte(n>>16), byte(n>>8), byte(n), byte(http2.FrameData), flags,
		byte(id>>24), byte(id>>16), byte(id>>8), byte(id))
}
