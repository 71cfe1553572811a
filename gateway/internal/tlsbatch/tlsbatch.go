// Package tlsbatch writes the records of one TLS write in one system call.
//
// crypto/tls makes a record of at most 16 KiB of a write at a time and
// writes each to the connection under it at once: a 64 KiB answer went
// out in five system calls, each a TCP send and a wakeup of the reader.
// Conn sits under a *tls.Conn; while WriteThrough writes through the TLS
// connection, the records are gathered instead, and written together when
// the TLS write returns.
//
// The gathered bytes are then the caller's to write as plaintext TCP
// bytes are: a write that timed out having moved some of them goes on
// with a fresh deadline (rearm), where a timed-out write inside crypto/tls
// breaks the connection for good. So a caller no longer has to cut its
// writes into pieces small enough to finish within one deadline for a
// slow client to keep its connection.
package tlsbatch

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Conn is the connection under a TLS connection.
type Conn struct {
	net.Conn

	// mu guards on, flushing and buf. It is never held across a write to
	// the socket: crypto/tls's Close, called to break a stuck write,
	// writes its alert first, and must not wait for that write.
	mu       sync.Mutex
	on       bool   // a WriteThrough is under way: records are gathered
	flushing bool   // its TLS write returned: what is gathered now is others' (maxLate)
	buf      []byte // records gathered, not yet written
}

// maxLate bounds the records gathered while a WriteThrough's own are being
// written: crypto/tls writes from its reader too (an answer to each
// KeyUpdate a client asks for), and a client that sends them without
// reading would otherwise grow the buffer for as long as the stuck write
// lasts. Past it the record's write fails, and with it the connection.
const maxLate = 64 << 10

// ErrLateRecords is the write error past maxLate.
var ErrLateRecords = errors.New("tlsbatch: too many records written while a write is stuck")

// New returns nc, ready to go under tls.Server or tls.Client.
func New(nc net.Conn) *Conn { return &Conn{Conn: nc} }

// Write is the TLS connection's: the record is gathered during a
// WriteThrough (an alert written meanwhile, by Close, goes after the
// records before it), written at once otherwise.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.on {
		if c.flushing && len(c.buf)+len(p) > maxLate {
			c.mu.Unlock()
			return 0, ErrLateRecords
		}
		if c.buf == nil {
			c.buf = getBuf()
		}
		c.buf = append(c.buf, p...)
		c.mu.Unlock()
		return len(p), nil
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// WriteThrough writes p to tc, the TLS connection over c, with the
// records it makes gathered and written in as few system calls as the
// socket takes them. rearm, when not nil, is called before each system
// call, to set the write deadline: a write that timed out having moved
// bytes goes on, one that moved none fails. The gathered bytes are at
// most p's and each record's 22 bytes; the caller bounds p. One
// goroutine at a time calls it.
func (c *Conn) WriteThrough(tc io.Writer, p []byte, rearm func()) error {
	c.mu.Lock()
	c.on = true
	c.mu.Unlock()
	_, err := tc.Write(p)
	if ferr := c.flush(rearm); err == nil {
		err = ferr
	}
	return err
}

// flush writes what was gathered, and what is gathered meanwhile, then
// ends the gathering.
func (c *Conn) flush(rearm func()) error {
	for {
		c.mu.Lock()
		c.flushing = true
		out := c.buf
		c.buf = nil
		if len(out) == 0 {
			c.on, c.flushing = false, false
			c.mu.Unlock()
			putBuf(out)
			return nil
		}
		c.mu.Unlock()
		err := WriteAll(c.Conn, out, rearm)
		putBuf(out)
		if err != nil {
			c.mu.Lock()
			c.on, c.flushing = false, false
			putBuf(c.buf)
			c.buf = nil
			c.mu.Unlock()
			return err
		}
	}
}

// WriteAll writes p to w as the gathered bytes are written: rearm, when
// not nil, sets the deadline before each write, and a write that timed
// out having moved bytes goes on; one that moved none fails. On a TCP
// connection (not a TLS one, which cannot go on after a timeout) it is
// the same for plaintext.
func WriteAll(w io.Writer, p []byte, rearm func()) error {
	for len(p) > 0 {
		if rearm != nil {
			rearm()
		}
		n, err := w.Write(p)
		p = p[n:]
		if err != nil && !(n > 0 && isTimeout(err)) {
			return err
		}
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Gathering buffers come from a pool, so that a connection holds one only
// while it writes; one grown past maxPooled (a caller's p past what the
// gateway's writers pass) is let go.
const (
	bufStart  = 32 << 10
	maxPooled = 512 << 10
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, bufStart); return &b }}

func getBuf() []byte { return (*bufPool.Get().(*[]byte))[:0] }

func putBuf(b []byte) {
	if b == nil || cap(b) > maxPooled {
		return
	}
	b = b[:0]
	bufPool.Put(&b)
}
