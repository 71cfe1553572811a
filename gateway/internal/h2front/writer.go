package h2front

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/envgate/envgate/gateway/internal/hpackmemo"
)

// writer queues a connection's frames and writes them. Whoever appends
// frames writes them unless another goroutine is writing already, which
// then takes them along: frames appended while a write is in progress go
// out together in the next one. The socket write happens outside mu, so
// the reader can always queue its control frames; what is queued is
// bounded (Options.MaxQueued). An idle connection holds no write buffer:
// they come from a pool for each burst of writes and go back after it.
type writer struct {
	nc      net.Conn
	timeout time.Duration
	// chunk, on TLS, is the most one write may take before its deadline
	// is renewed (writeChunk): a TLS connection cannot go on after a
	// write that timed out, so each must finish in time even for a slow
	// client. A TCP write that timed out having written some of its
	// bytes goes on with a fresh deadline, so plaintext writes take the
	// whole queue in one system call (0).
	chunk int
	// batched, on a TLS connection that has it (sniff's), writes through
	// TLS with the records gathered into one system call, and goes on
	// after a timeout that moved bytes as a TCP write does (tlsbatch):
	// then chunk is batchChunk, which only bounds what is gathered.
	batched func(p []byte, rearm func()) error

	mu      sync.Mutex // guards everything below, the writes of the connection's framer, and the send windows of conn and streams
	cond    sync.Cond  // on mu: queue drained, window granted, stream or connection ended
	buf     []byte     // frames queued
	writing bool       // a goroutine is writing to the socket
	err     error      // the connection failed or ended: nothing more is written
	enc     *hpackmemo.Encoder
	hbuf    headerBuf

	// sentSince is set when HEADERS or DATA go out, and taken by the
	// reader at the client's next PING (pingPolicy): a client pinging a
	// connection that answers is not abusing it.
	sentSince atomic.Bool

	// Send flow control and the peer's limits, from its SETTINGS.
	connWindow    int64
	initialWindow int64
	maxFrame      int

	// vec writes several buffers in one system call (writev); nil when
	// the connection cannot (TLS). With it, large DATA payloads go from
	// the caller's buffers to the socket (writeDirect) instead of being
	// copied into buf first: that copy was a tenth of the gateway's CPU
	// on 64 KiB streams. hdrs and bufs are a direct write's frame headers
	// and vector, reused; only the writing goroutine touches them.
	vec  func(*net.Buffers) (int64, error)
	hdrs []byte
	bufs net.Buffers
	// deadline is the write deadline last set on nc; only the writing
	// goroutine touches it (armDeadline).
	deadline time.Time
}

// vectorWriter is a connection that writes buffers in one system call
// when the socket under it can (sniff's and edge's connections).
type vectorWriter interface {
	WriteBuffers(*net.Buffers) (int64, error)
}

// vectorOf is nc's vectored write, nil for a TLS connection (whose
// records are made from one buffer at a time) or one that has none.
func vectorOf(nc net.Conn) func(*net.Buffers) (int64, error) {
	switch c := nc.(type) {
	case *net.TCPConn:
		return func(v *net.Buffers) (int64, error) { return v.WriteTo(c) }
	case vectorWriter:
		if tlsState(nc) == nil {
			return c.WriteBuffers
		}
	}
	return nil
}

// headerBuf collects one header block from the encoder.
// frontMemo is the fields a connection's encoder remembers (hpackmemo):
// an answer's :status, content-type, date, grpc-status and a few of the
// upstream's, in 8 slots of 48 bytes — the server holds tens of thousands
// of connections.
const frontMemo = 8

type headerBuf struct{ b []byte }

func (h *headerBuf) Write(p []byte) (int, error) { h.b = append(h.b, p...); return len(p), nil }
func (h *headerBuf) Len() int                    { return len(h.b) }
func (h *headerBuf) Bytes() []byte               { return h.b }

// appendTo is the framer's io.Writer: it queues the frame.
type appendTo struct{ w *writer }

func (a appendTo) Write(p []byte) (int, error) {
	if a.w.buf == nil {
		a.w.buf = getWriteBuf()
	}
	a.w.buf = append(a.w.buf, p...)
	return len(p), nil
}

// flushLocked writes what is queued, unless a write is in progress (that
// goroutine takes it along), and returns with mu unlocked.
func (w *writer) flushLocked() {
	if w.writing || len(w.buf) == 0 || w.err != nil {
		w.mu.Unlock()
		return
	}
	w.writing = true
	if len(w.buf) < minBatch {
		// Yield once so the streams that are ready to run add their
		// frames to this write, as gRPC's own writer does (loopyWriter,
		// controlbuf.go): a unary answer is a few hundred bytes, and
		// without it each went out in a system call of its own.
		w.mu.Unlock()
		runtime.Gosched()
		w.mu.Lock()
	}
	// The buffer just written takes the next queue while the burst goes
	// on: a pooled one would grow again from bufStart by doubling, which
	// was a tenth of a 1 KiB stream's CPU.
	var spare []byte
	for len(w.buf) > 0 && w.err == nil {
		out := w.buf
		w.buf = spare
		w.mu.Unlock()
		err := w.write(out)
		w.mu.Lock()
		spare = out[:0]
		if len(w.buf) == 0 && w.buf != nil {
			// Nothing was queued meanwhile: keep the larger one.
			if cap(w.buf) > cap(spare) {
				spare, w.buf = w.buf, spare
			}
			putWriteBuf(w.buf)
			w.buf = nil
		}
		if err != nil && w.err == nil {
			w.err = err
		}
		w.cond.Broadcast() // the queue drained
	}
	putWriteBuf(spare)
	w.writing = false
	failed := w.err
	w.mu.Unlock()
	if failed != nil {
		_ = w.nc.Close() // the reader then ends the connection
	}
}

// write writes p to the socket, failing only when no byte could be
// written for the write timeout: a slow client (a phone downloading at a
// few KiB a second) keeps its connection, one that stopped reading loses
// it (net/http's HTTP/2 server's WriteByteTimeout). On TLS p goes in
// chunks (writer.chunk): each record by record with a fresh deadline, or,
// batched, each in one system call that goes on as a TCP write does.
func (w *writer) write(p []byte) error {
	for len(p) > 0 {
		chunk := p
		if w.chunk > 0 {
			chunk = p[:min(len(p), w.chunk)]
		}
		if w.batched != nil {
			if err := w.batched(chunk, w.armDeadline); err != nil {
				return err
			}
			p = p[len(chunk):]
			continue
		}
		w.armDeadline()
		n, err := w.nc.Write(chunk)
		p = p[n:]
		if stalled(int64(n), err) {
			return err
		}
	}
	return nil
}

// armDeadline gives the next socket write the write timeout, less at
// most a tenth of it (or a second): the deadline moves only when it fell
// that far behind, since setting one resets a runtime timer, which cost
// more than the rest of a small answer's write when done for each.
func (w *writer) armDeadline() {
	if w.timeout <= 0 {
		return
	}
	now := time.Now()
	if w.deadline.Sub(now) >= w.timeout-min(w.timeout/10, time.Second) {
		return
	}
	w.deadline = now.Add(w.timeout)
	_ = w.nc.SetWriteDeadline(w.deadline)
}

// stalled reports whether a write that took n bytes and returned err
// failed: a timeout after some bytes went is a slow client, and the write
// goes on with a fresh deadline.
func stalled(n int64, err error) bool {
	var ne net.Error
	return err != nil && !(n > 0 && errors.As(err, &ne) && ne.Timeout())
}

// writeVec is write of a vector (w.vec), which it consumes.
func (w *writer) writeVec(v *net.Buffers) error {
	for len(*v) > 0 {
		w.armDeadline()
		if n, err := w.vec(v); stalled(n, err) {
			return err
		}
	}
	return nil
}

// minBatch is the queue under which a writer yields before its write,
// gRPC's minBatchSize.
const minBatch = 1000

// writeChunk is the most one write to a TLS connection may take before
// its deadline is renewed.
const writeChunk = 16 << 10

// batchChunk is the most one batched TLS write takes: a 64 KiB message
// and its frames' headers in one system call, and no more gathered in
// the TLS records than that.
const batchChunk = 80 << 10

// batcher is a TLS connection that gathers the records of a write
// (sniff's).
type batcher interface {
	WriteBatched() func(p []byte, rearm func()) error
}

// batchOf is nc's batched write, nil when it has none.
func batchOf(nc net.Conn) func(p []byte, rearm func()) error {
	if b, ok := nc.(batcher); ok {
		return b.WriteBatched()
	}
	return nil
}

// waitWritten returns once everything queued was written (or the
// connection failed): a connection closed after its last response must
// not cut that response short.
func (w *writer) waitWritten() {
	w.mu.Lock()
	for (w.writing || len(w.buf) > 0) && w.err == nil {
		if !w.writing {
			w.flushLocked()
			w.mu.Lock()
			continue
		}
		w.cond.Wait()
	}
	w.mu.Unlock()
}

// Write buffers: pooled, so a connection holds one only while it has
// bytes in it, and a message of tens of KiB does not grow a new one by
// doubling each time; one grown past maxPooledWrite is let go rather than
// kept. maxPooledWrite is above what a queue at its bound grows to
// (MaxQueued's default, a frame more, and growslice's rounding): below it,
// a client reading slower than its streams arrive had its full queue's
// buffer dropped and grown again from bufStart on every write, copying it
// each time. Request bodies are in chunks from bufpool (pipe).
const (
	bufStart       = 4 << 10
	maxPooledWrite = 1 << 20
)

var writeBufPool = sync.Pool{New: func() any { b := make([]byte, 0, bufStart); return &b }}

func getWriteBuf() []byte { return (*writeBufPool.Get().(*[]byte))[:0] }

func putWriteBuf(b []byte) {
	if cap(b) > 0 && cap(b) <= maxPooledWrite {
		b = b[:0]
		writeBufPool.Put(&b)
	}
}

// dataHeader appends a DATA frame's header: the payload follows.
func (w *writer) dataHeader(id uint32, n int, end bool) {
	if w.buf == nil {
		w.buf = getWriteBuf()
	}
	var flags byte
	if end {
		flags = byte(http2.FlagDataEndStream)
	}
	w.buf = append(w.buf, byte(n>>16), byte(n>>8), byte(n), byte(http2.FrameData), flags,
		byte(id>>24), byte(id>>16), byte(id>>8), byte(id))
}
