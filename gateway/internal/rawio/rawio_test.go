//go:build linux

package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair is a connected TCP pair on loopback: c is wrapped, peer is net's.
func pair(t testing.TB) (c *Conn, peer *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		a, err := Listener(l).Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- a
	}()
	d, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-accepted
	if a == nil {
		t.Fatal("accept failed")
	}
	rc, ok := a.(*Conn)
	if !ok {
		t.Fatalf("Listener accepted a %T, want *rawio.Conn", a)
	}
	t.Cleanup(func() { rc.Close(); d.Close() })
	return rc, d.(*net.TCPConn)
}

// pattern is n bytes that differ from their neighbours' offsets.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func TestWrapLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Wrap(a); got != a {
		t.Fatalf("Wrap(pipe) = %T, want the pipe itself", got)
	}
}

// A write larger than the socket buffers waits for the peer to read (the
// EAGAIN path), and every byte arrives in order, both ways.
func TestLargeWriteAndReadArriveWhole(t *testing.T) {
	c, peer := pair(t)
	want := pattern(16 << 20)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := c.Write(want)
	if err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer read %d bytes, not what was written (%d)", len(b), len(want))
	}

	back := make(chan error, 1)
	go func() {
		_, err := peer.Write(want)
		peer.CloseWrite()
		back <- err
	}()
	b, err := io.ReadAll(c) // small reads until io.EOF
	if err != nil || !bytes.Equal(b, want) {
		t.Fatalf("ReadAll = %d bytes, %v; want %d bytes, nil", len(b), err, len(want))
	}
	if err := <-back; err != nil {
		t.Fatal(err)
	}
}

func TestReadAtPeerCloseIsEOF(t *testing.T) {
	c, peer := pair(t)
	peer.Write([]byte("x"))
	peer.Close()
	buf := make([]byte, 8)
	if n, err := c.Read(buf); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v; want 1, nil", n, err)
	}
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v; want 0, nil", n, err)
	}
}

func TestReadDeadline(t *testing.T) {
	c, _ := pair(t)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(make([]byte, 8))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline = %v; want a timeout, os.ErrDeadlineExceeded", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("error %#v; want a *net.OpError of op read", err)
	}
}

// A peer that reads nothing: the write fills the buffers, waits, and its
// deadline ends it with what was written.
func TestWriteDeadline(t *testing.T) {
	c, _ := pair(t)
	big := pattern(64 << 20)
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := c.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write = %d, %v; want os.ErrDeadlineExceeded", n, err)
	}
	if n <= 0 || n >= 64<<20 {
		t.Fatalf("Write wrote %d bytes before its deadline; want some, not all", n)
	}
	v := net.Buffers{big[:32<<20], big[32<<20:]}
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.WriteBuffers(&v); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteBuffers = %v; want os.ErrDeadlineExceeded", err)
	}
}

func TestCloseEndsABlockedRead(t *testing.T) {
	c, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		done <- err
	}()
	// The read holds rmu from its start to its end: once it holds it,
	// it is under way (waiting for data, or about to), and the close
	// must end it.
	for c.rmu.TryLock() {
		c.rmu.Unlock()
		runtime.Gosched()
	}
	c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read on a closed conn = %v; want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write on a closed conn = %v; want net.ErrClosed", err)
	}
}

// A reset by the peer is the system call's error, as net reports it.
func TestResetIsECONNRESET(t *testing.T) {
	c, peer := pair(t)
	peer.SetLinger(0)
	c.Write([]byte("unread")) // so the close resets
	peer.Close()
	buf := make([]byte, 8)
	var err error
	for err == nil {
		_, err = c.Read(buf)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read after a reset = %v; want ECONNRESET", err)
	}
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "read" {
		t.Fatalf("error %#v; want an os.SyscallError of read", err)
	}
}

// WriteBuffers sends many buffers, more than one writev takes and some
// empty, in order, and consumes them.
func TestWriteBuffers(t *testing.T) {
	c, peer := pair(t)
	all := pattern(3000 * 1000)
	var v net.Buffers
	for i := 0; i < len(all); i += 1000 {
		v = append(v, all[i:i+1000], nil)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := c.WriteBuffers(&v)
	if err != nil || n != int64(len(all)) {
		t.Fatalf("WriteBuffers = %d, %v; want %d, nil", n, err, len(all))
	}
	if len(v) != 0 {
		t.Fatalf("WriteBuffers left %d buffers; want them consumed", len(v))
	}
	for _, p := range c.iov[:cap(c.iov)] {
		if p.Base != nil {
			t.Fatal("WriteBuffers kept a pointer to a written buffer")
		}
	}
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, all) {
		t.Fatalf("peer read %d bytes, not what was written (%d)", len(b), len(all))
	}
}

func TestConsume(t *testing.T) {
	v := net.Buffers{[]byte("ab"), nil, []byte("cde"), []byte("f")}
	consume(&v, 3)
	if len(v) != 2 || string(v[0]) != "de" || string(v[1]) != "f" {
		t.Fatalf("after consuming 3: %q", v)
	}
	consume(&v, 3)
	if len(v) != 0 {
		t.Fatalf("after consuming all: %q", v)
	}
}

// cpuTime is the process's user and system time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The ping-pong of a proxy hop, net's connections against raw ones (both
// ends), with the CPU time per round trip (cpu-ns/op): what this package
// is for, as wall time on a shared machine says little.
func BenchmarkPingPong(b *testing.B) {
	for _, raw := range []bool{false, true} {
		name := "net"
		if raw {
			name = "rawio"
		}
		b.Run(name, func(b *testing.B) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			served := make(chan struct{})
			go func() {
				defer close(served)
				s, err := l.Accept()
				if err != nil {
					return
				}
				if raw {
					s = Wrap(s)
				}
				defer s.Close()
				buf := make([]byte, 512)
				for {
					n, err := s.Read(buf)
					if err != nil {
						return
					}
					if _, err := s.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
			var c net.Conn
			c, err = net.Dial("tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			if raw {
				c = Wrap(c)
			}
			defer func() { c.Close(); <-served }()
			msg, buf := pattern(100), make([]byte, 512)
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// WriteRead sends the request whole and returns the first bytes of the
// answer the peer sends once it has it.
func TestWriteReadRequestAndAnswer(t *testing.T) {
	c, peer := pair(t)
	req := pattern(3000)
	buf := make([]byte, 64)
	for i := 0; i < 3; i++ { // and again on the same connection
		go func() {
			got := make([]byte, len(req))
			if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, req) {
				peer.Close()
				return
			}
			peer.Write([]byte("answer"))
		}()
		w, n, err := c.WriteRead(req, buf)
		if err != nil || w != len(req) || string(buf[:n]) != "answer" {
			t.Fatalf("WriteRead #%d = %d, %q, %v; want %d, \"answer\", nil", i, w, buf[:n], err, len(req))
		}
	}
}

// A request larger than the socket takes at once is written whole, the
// rest outside the read's wait, and the answer still read.
func TestWriteReadLargeRequest(t *testing.T) {
	c, peer := pair(t)
	req := pattern(16 << 20)
	go func() {
		got := make([]byte, len(req))
		if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, req) {
			peer.Close()
			return
		}
		peer.Write([]byte("whole"))
	}()
	buf := make([]byte, 64)
	w, n, err := c.WriteRead(req, buf)
	if err != nil || w != len(req) || string(buf[:n]) != "whole" {
		t.Fatalf("WriteRead = %d, %q, %v; want %d, \"whole\", nil", w, buf[:n], err, len(req))
	}
}

// A peer that closed before the request (an upstream closing an idle
// connection) ends WriteRead with an error, not a wait for an answer: the
// readiness its close raised was forgotten, and the reset its kernel
// answers the write with raises another.
func TestWriteReadToAPeerThatClosed(t *testing.T) {
	c, peer := pair(t)
	peer.Close()
	// The peer's FIN is here before the request: the socket is readable.
	waitReadable(t, c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang fails, later
	buf := make([]byte, 8)
	_, _, err := c.WriteRead([]byte("GET / HTTP/1.1\r\n\r\n"), buf)
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteRead to a closed peer = %v; want its end (EOF or a reset)", err)
	}
}

// A peer that never answers leaves WriteRead to its read deadline, the
// request written.
func TestWriteReadDeadline(t *testing.T) {
	c, peer := pair(t)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	w, _, err := c.WriteRead([]byte("ping"), make([]byte, 8))
	if !errors.Is(err, os.ErrDeadlineExceeded) || w != 4 {
		t.Fatalf("WriteRead = %d, %v; want 4 written and a deadline error", w, err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "ping" {
		t.Fatalf("the peer read %q, %v; want \"ping\"", got, err)
	}
}

// A closed connection writes nothing.
func TestWriteReadClosed(t *testing.T) {
	c, _ := pair(t)
	c.Close()
	w, n, err := c.WriteRead([]byte("x"), make([]byte, 8))
	if !errors.Is(err, net.ErrClosed) || w != 0 || n != 0 {
		t.Fatalf("WriteRead on a closed connection = %d, %d, %v; want net.ErrClosed", w, n, err)
	}
}

// waitReadable blocks until c's socket is readable (poll(2), bounded).
func waitReadable(t *testing.T, c *Conn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var perr error
	err = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, perr = unix.Poll(fds, 10_000)
	})
	if err != nil || perr != nil || n != 1 {
		t.Fatalf("poll = %d, %v, %v; want the socket readable", n, err, perr)
	}
}

// BenchmarkRoundTrip: a small request and its answer over loopback, as
// the HTTP/1.1 fast path sends one to its upstream: Write then Read (the
// read first finds nothing: EAGAIN, then the poller), against WriteRead.
func BenchmarkRoundTrip(b *testing.B) {
	for _, tc := range []struct {
		name string
		rt   func(c *Conn, req, buf []byte) error
	}{
		{"Write+Read", func(c *Conn, req, buf []byte) error {
			if _, err := c.Write(req); err != nil {
				return err
			}
			_, err := c.Read(buf)
			return err
		}},
		{"WriteRead", func(c *Conn, req, buf []byte) error {
			_, _, err := c.WriteRead(req, buf)
			return err
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c, peer := pair(b)
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 512)
				for {
					n, err := peer.Read(buf)
					if err != nil {
						return
					}
					if _, err := peer.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
			req, buf := pattern(200), make([]byte, 512)
			for b.Loop() {
				if err := tc.rt(c, req, buf); err != nil {
					b.Fatal(err)
				}
			}
			peer.Close()
			<-done
		})
	}
}
