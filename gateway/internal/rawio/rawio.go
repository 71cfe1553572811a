//go:build linux

package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// Conn is a TCP connection whose Read, Write and WriteBuffers are raw
// system calls.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn

	// rmu guards the read fields: a read's buffer and outcome, given to
	// readFn, which the RawConn calls. It is held for the whole read,
	// waits included, as net holds the socket's read lock; two
	// goroutines seldom read one connection at once, so it is seldom
	// contended. wmu is the same for writes. Only WriteRead takes both,
	// rmu first. Write is a vectored write of one buffer (one and
	// oneArr).
	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   syscall.Errno
	readFn func(fd uintptr) bool
	// wrFn is writeThenRead, bound once; wrOut is what it has left to
	// write (nil once written whole), wrErr its write's error.
	wrFn   func(fd uintptr) bool
	wrOut  []byte
	wrN    int
	wrErr  syscall.Errno
	wmu    sync.Mutex
	vec    *net.Buffers
	vn     int64
	werr   syscall.Errno
	vecFn  func(fd uintptr) bool
	iov    []syscall.Iovec
	one    net.Buffers
	oneArr [1][]byte
}

// Wrap returns c reading and writing with raw system calls when it is a
// *net.TCPConn, else c itself.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	rw := &Conn{TCPConn: tc, rc: rc}
	rw.readFn = rw.read
	rw.vecFn = rw.writev
	rw.wrFn = rw.writeThenRead
	return rw
}

// Listener wraps the connections l accepts (Wrap).
func Listener(l net.Listener) net.Listener { return listener{l} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}

// Read reads as net.Conn's Read does: io.EOF when the peer closed its side.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rbuf = nil
	c.rmu.Unlock()
	if err := c.outcome("read", err, errno); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// read is one attempt: false when the socket has nothing yet (the
// RawConn then waits until it is readable).
func (c *Conn) read(fd uintptr) bool {
	for {
		n, errno := sysRead(fd, c.rbuf)
		switch errno {
		case 0:
			c.rn = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.rerr = errno
		return true
	}
}

// WriteRead writes all of w, then reads into p as Read does: a request
// and the first bytes of its answer. It is for a peer that sends nothing
// before it has the request (an HTTP/1.1 upstream): the write is made
// inside the read's wait, after the poller forgot the socket's last
// readiness, so the read is tried only once the socket is readable
// again, which saves the read that would find nothing yet (EAGAIN) and
// a trip through the poller. A peer that did send earlier (an upstream
// closing an idle connection) still wakes the read: its kernel answers
// the write with a reset. What the socket cannot take at once is written
// as Write writes, and the read is then an ordinary one.
func (c *Conn) WriteRead(w, p []byte) (written, n int, err error) {
	switch {
	case len(p) == 0:
		n, err := c.Write(w)
		return n, 0, err
	case len(w) == 0:
		n, err := c.Read(p)
		return 0, n, err
	}
	c.rmu.Lock()
	c.wmu.Lock()
	c.wrOut, c.wrN, c.wrErr = w, 0, 0
	c.rbuf, c.rn, c.rerr = p, 0, 0
	rerr := c.rc.Read(c.wrFn)
	rest, written, werrno := c.wrOut, c.wrN, c.wrErr
	n, errno := c.rn, c.rerr
	c.wrOut, c.rbuf = nil, nil
	c.wmu.Unlock()
	c.rmu.Unlock()
	if werrno != 0 {
		return written, 0, c.opError("write", os.NewSyscallError("write", werrno))
	}
	if rest != nil {
		if rerr != nil {
			// The poller refused before the callback ran (a closed
			// connection, a deadline): nothing was written.
			return written, 0, c.outcome("write", rerr, 0)
		}
		// The socket's buffer filled: the rest as Write writes it,
		// then an ordinary read.
		m, err := c.Write(rest)
		written += m
		if err != nil {
			return written, 0, err
		}
		n, err = c.Read(p)
		return written, n, err
	}
	if err := c.outcome("read", rerr, errno); err != nil {
		return written, 0, err
	}
	if n == 0 {
		return written, 0, io.EOF
	}
	return written, n, nil
}

// writeThenRead is WriteRead's RawConn callback: it writes on its first
// call and then asks to wait for the socket to be readable; later calls
// read.
func (c *Conn) writeThenRead(fd uintptr) bool {
	for c.wrOut != nil {
		m, errno := sysWrite(fd, c.wrOut)
		switch errno {
		case 0:
			c.wrN += m
			c.wrOut = c.wrOut[m:]
			if len(c.wrOut) == 0 {
				c.wrOut = nil
				return false // written: wait for the answer
			}
		case syscall.EINTR:
		case syscall.EAGAIN:
			return true // the rest outside the read's wait
		default:
			c.wrErr = errno
			return true
		}
	}
	return c.read(fd)
}

// Write writes all of p, waiting while the socket's buffer is full.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	c.oneArr[0] = p
	c.one = c.oneArr[:]
	n, err := c.writeLocked(&c.one, "write")
	c.oneArr[0] = nil
	c.wmu.Unlock()
	return int(n), err
}

// maxIovecs is the most buffers one writev takes (Linux's IOV_MAX).
const maxIovecs = 1024

// WriteBuffers writes all of v in as few system calls as it can (writev),
// consuming v, as v.WriteTo(c) does on a *net.TCPConn.
func (c *Conn) WriteBuffers(v *net.Buffers) (int64, error) {
	c.wmu.Lock()
	n, err := c.writeLocked(v, "writev")
	c.wmu.Unlock()
	return n, err
}

// writeLocked writes all of v (writev), with wmu held; op names the
// operation in its error.
func (c *Conn) writeLocked(v *net.Buffers, op string) (int64, error) {
	c.vec, c.vn, c.werr = v, 0, 0
	err := c.rc.Write(c.vecFn)
	n, errno := c.vn, c.werr
	c.vec = nil
	clear(c.iov[:cap(c.iov)]) // the buffers are the caller's
	c.iov = c.iov[:0]
	return n, c.outcome(op, err, errno)
}

func (c *Conn) writev(fd uintptr) bool {
	v := c.vec
	for {
		iov := c.iov[:0]
		for _, b := range *v {
			if len(b) == 0 {
				continue
			}
			iov = append(iov, syscall.Iovec{Base: &b[0]})
			iov[len(iov)-1].SetLen(len(b))
			if len(iov) == maxIovecs {
				break
			}
		}
		c.iov = iov
		if len(iov) == 0 {
			*v = (*v)[:0]
			return true
		}
		n, errno := sysWritev(fd, iov)
		switch errno {
		case 0:
			c.vn += int64(n)
			consume(v, int64(n))
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.werr = errno
		return true
	}
}

// consume drops n written bytes from the front of v, as net.Buffers'
// WriteTo does.
func consume(v *net.Buffers, n int64) {
	for len(*v) > 0 {
		l := int64(len((*v)[0]))
		if l > n {
			(*v)[0] = (*v)[0][n:]
			return
		}
		n -= l
		*v = (*v)[1:]
	}
}

// outcome is how an operation ended, as net reports it: the poller's
// error (a deadline, a closed connection), the system call's, or nil.
func (c *Conn) outcome(op string, err error, errno syscall.Errno) error {
	switch {
	case err != nil:
		return c.opError(op, unwrapRaw(err))
	case errno != 0:
		return c.opError(op, os.NewSyscallError(op, errno))
	}
	return nil
}

// unwrapRaw is the poller's error under the RawConn's "raw-read" or
// "raw-write" net.OpError (a deadline, a closed connection), which
// opError wraps again under the operation's own name.
func unwrapRaw(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err
	}
	return err
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
