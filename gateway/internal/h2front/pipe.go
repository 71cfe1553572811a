package h2front

import (
	"io"
	"sync"

	"github.com/envgate/envgate/gateway/internal/bufpool"
)

// pipe is a request body: the reader appends what arrives (no more than
// the stream's window, which flow control enforces), the handler reads it,
// or takes it without a copy (take).
//
// What arrived is kept in chunks from bufpool, each filled before the next
// is taken, so a chunk handed over whole is a pooled buffer its taker
// gives back, and a 64 KiB message is not copied again into buffers of its
// own (a copy that was 6% of a 64 KiB call's CPU over TLS). A chunk is
// sized for what arrives, doubling per chunk while bytes pile up, up to
// chunkMax: a body of 100 B takes 256 B, a client sending 1-byte frames
// fills small chunks first, and only the last chunk has room left, so
// the chunks hold at most chunkMax more than their bytes. The last chunk
// read empty is kept for the next bytes, so that a stream of small
// messages reuses one.
type pipe struct {
	mu   sync.Mutex
	cond sync.Cond // on mu: data or the end arrived
	// Under mu: the chunks with bytes not read yet, oldest first (or
	// the one kept, read empty), how much of the first was read, and n,
	// their unread bytes in all.
	chunks []*[]byte
	inline [2]*[]byte // chunks' first backing: a body of two chunks allocates none
	off, n int
	err    error // io.EOF at the end, or why it ended early
}

// chunkMax is the largest chunk: a DATA frame's payload at the frame size
// h2front reads (16 KiB) fills one, and bufpool keeps it.
const chunkMax = 16 << 10

// takeMin is the least capacity of a chunk take hands over: below it a
// copy costs less than the buffer's bookkeeping.
const takeMin = 4 << 10

// write appends b, unless the body ended (false: nothing will read it).
func (p *pipe) write(b []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return false
	}
	if p.chunks == nil {
		p.chunks = p.inline[:0]
	}
	p.n += len(b)
	for len(b) > 0 {
		var last *[]byte
		if k := len(p.chunks); k > 0 {
			last = p.chunks[k-1]
		}
		if last == nil || len(*last) == cap(*last) {
			size := len(b)
			if last != nil {
				size = max(size, 2*cap(*last)) // bytes pile up: double
			}
			last = bufpool.Default.Get(min(size, chunkMax))
			*last = (*last)[:0]
			p.chunks = append(p.chunks, last)
		}
		k := min(len(b), cap(*last)-len(*last))
		*last = append(*last, b[:k]...)
		b = b[k:]
	}
	p.cond.Signal()
	return true
}

// wait waits for bytes or the end; mu held. At the end with nothing
// left to read it gives the chunks back and returns why the body ended.
func (p *pipe) wait() error {
	for p.n == 0 && p.err == nil {
		p.cond.Wait()
	}
	if p.n == 0 {
		p.release()
		return p.err
	}
	return nil
}

func (p *pipe) read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.wait(); err != nil {
		return 0, err
	}
	n := 0
	for n < len(b) && p.n > 0 {
		head := *p.chunks[0]
		k := copy(b[n:], head[p.off:])
		n += k
		p.off += k
		p.n -= k
		if p.off == len(head) {
			if len(p.chunks) == 1 {
				// Kept for what comes next: a stream of small
				// messages reuses one chunk.
				*p.chunks[0], p.off = head[:0], 0
			} else {
				bufpool.Default.Put(p.popHead())
			}
		}
	}
	return n, nil
}

// take is read without a copy: once bytes are in, it hands over the
// first chunk, whose unread bytes are (*buf)[off:], when they are all of
// it, no more than max, and fill at least half of it (so what a taker
// holds is at most twice what it took, as a pooled buffer of its size
// would be). The chunk is the caller's, to give back to bufpool.Default.
// Otherwise it returns nil, and the caller reads.
func (p *pipe) take(max int) (buf *[]byte, off int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.wait(); err != nil {
		return nil, 0, err
	}
	head := p.chunks[0]
	n := len(*head) - p.off
	if n > max || cap(*head) < takeMin || 2*n < cap(*head) {
		return nil, 0, nil
	}
	off = p.off
	p.n -= n
	return p.popHead(), off, nil
}

// popHead removes the first chunk, read or taken, and returns it; mu held.
func (p *pipe) popHead() *[]byte {
	head := p.chunks[0]
	p.chunks[0] = nil
	p.chunks = p.chunks[1:]
	if len(p.chunks) == 0 {
		p.chunks = p.inline[:0]
	}
	p.off = 0
	return head
}

// buffered is how many bytes wait to be read, and whether the body ended
// after them (reading them and then the end does not wait).
func (p *pipe) buffered() (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.err == io.EOF
}

// release gives the chunks back to the pool; mu held.
func (p *pipe) release() {
	for _, c := range p.chunks {
		bufpool.Default.Put(c)
	}
	clear(p.chunks)
	p.chunks = p.inline[:0]
	p.off, p.n = 0, 0
}

// closeWith ends the body with err once, running before (trailers)
// first; an error other than EOF drops what was not read and returns its
// size, for the connection's window.
func (p *pipe) closeWith(err error, before func()) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return 0
	}
	if before != nil {
		before()
	}
	p.err = err
	dropped := 0
	if err != io.EOF {
		dropped = p.n
		p.release()
	}
	p.cond.Broadcast()
	return dropped
}
