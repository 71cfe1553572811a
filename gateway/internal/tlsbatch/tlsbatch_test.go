package tlsbatch

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envgate/envgate/internal/testca"
)

// pair is a TLS connection over real loopback TCP: the server's side over
// a Conn (over a counter of the writes that reach the socket), and the
// client's TLS connection.
type pair struct {
	srv    *tls.Conn
	batch  *Conn
	writes *counter
	cli    *tls.Conn
}

type counter struct {
	net.Conn
	n      atomic.Int64
	signal chan struct{} // when not nil, closed as a write of more than 1 MiB starts
	once   sync.Once
}

func (c *counter) Write(p []byte) (int, error) {
	c.n.Add(1)
	if c.signal != nil && len(p) > 1<<20 {
		c.once.Do(func() { close(c.signal) })
	}
	return c.Conn.Write(p)
}

func newPair(t *testing.T, sndbuf int) *pair {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		nc, err := lis.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- nc
	}()
	raw, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	snc := <-accepted
	if snc == nil {
		t.Fatal("accept failed")
	}
	if sndbuf > 0 {
		_ = snc.(*net.TCPConn).SetWriteBuffer(sndbuf)
		_ = raw.(*net.TCPConn).SetReadBuffer(sndbuf)
	}
	p := &pair{writes: &counter{Conn: snc}}
	p.batch = New(p.writes)
	ca := testca.New(t, "tlsbatch test")
	cert := ca.Issue(t, testca.Leaf{DNS: []string{"test"}}).TLS(t)
	p.srv = tls.Server(p.batch, &tls.Config{Certificates: []tls.Certificate{cert}})
	p.cli = tls.Client(raw, &tls.Config{RootCAs: ca.Pool(), ServerName: "test"})
	t.Cleanup(func() { p.cli.Close(); p.srv.Close() })
	hs := make(chan error, 1)
	go func() { hs <- p.srv.Handshake() }()
	if err := p.cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	return p
}

func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

// readAll reads n bytes from the client's TLS connection in the
// background.
func (p *pair) readAll(n int) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, n)
		m, _ := io.ReadFull(p.cli, b)
		got <- b[:m]
	}()
	return got
}

// TestRecordsOfAWriteGoInOneSystemCall: the five records crypto/tls makes
// of a 64 KiB write (four of 16 KiB and the rest; the first were smaller
// still, crypto/tls sizing records to the TCP segment at a connection's
// start) reach the socket in one write, and the client reads them whole.
func TestRecordsOfAWriteGoInOneSystemCall(t *testing.T) {
	p := newPair(t, 0)
	want := payload(64<<10 + 300)
	for round := range 3 {
		got := p.readAll(len(want))
		before := p.writes.n.Load()
		if err := p.batch.WriteThrough(p.srv, want, nil); err != nil {
			t.Fatal(err)
		}
		if n := p.writes.n.Load() - before; n != 1 {
			t.Fatalf("round %d: %d writes reached the socket, want 1", round, n)
		}
		if b := <-got; !bytes.Equal(b, want) {
			t.Fatalf("round %d: the client read %d bytes, not what was written", round, len(b))
		}
	}
	// Outside WriteThrough a write goes through at once, record by
	// record, as crypto/tls writes it.
	got := p.readAll(len(want))
	before := p.writes.n.Load()
	if _, err := p.srv.Write(want); err != nil {
		t.Fatal(err)
	}
	if n := p.writes.n.Load() - before; n < 4 {
		t.Fatalf("a plain TLS write reached the socket in %d writes, want one a record", n)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatal("the client read something else after a plain write")
	}
}

// TestSlowReaderGetsEverything: a client reading slowly but steadily gets
// a write that takes many times the deadline each system call is given,
// since a timeout that moved bytes goes on (rearm); inside crypto/tls
// the first timeout would have broken the connection.
func TestSlowReaderGetsEverything(t *testing.T) {
	p := newPair(t, 8<<10)
	want := payload(256 << 10)
	got := make(chan []byte, 1)
	go func() {
		// 96 KiB a second: under three seconds, five deadlines.
		b := make([]byte, 0, len(want))
		buf := make([]byte, 4<<10)
		start := time.Now()
		for len(b) < len(want) {
			time.Sleep(time.Until(start.Add(time.Duration(len(b)) * time.Second / (96 << 10)))) // the client's pace
			n, err := p.cli.Read(buf)
			b = append(b, buf[:n]...)
			if err != nil {
				break
			}
		}
		got <- b
	}()
	const timeout = 500 * time.Millisecond
	timeouts := 0
	rearm := func() {
		timeouts++
		_ = p.srv.SetWriteDeadline(time.Now().Add(timeout))
	}
	if err := p.batch.WriteThrough(p.srv, want, rearm); err != nil {
		t.Fatalf("after %d deadlines: %v", timeouts, err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the client read %d bytes, not what was written", len(b))
	}
	if timeouts < 3 {
		t.Fatalf("the write needed %d deadlines: the client was not slow enough to test anything", timeouts)
	}
	t.Logf("one write went on through %d deadlines of %v", timeouts, timeout)
}

// TestStoppedReaderFails: a client that reads nothing fails the write
// once a deadline passes with no byte moved.
func TestStoppedReaderFails(t *testing.T) {
	p := newPair(t, 8<<10)
	start := time.Now()
	err := p.batch.WriteThrough(p.srv, payload(4<<20), func() { _ = p.srv.SetWriteDeadline(time.Now().Add(200 * time.Millisecond)) })
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteThrough to a client that reads nothing: %v, want a timeout", err)
	}
	t.Logf("failed after %v", time.Since(start).Round(time.Millisecond))
}

// TestCloseBreaksAStuckWrite: Close, as the overload manager and shutdown
// call it to end a connection whose client stopped reading, ends a write
// under way without waiting for it, though crypto/tls's own write has
// returned and Close writes its alert: the alert is gathered, not
// written past the stuck one.
func TestCloseBreaksAStuckWrite(t *testing.T) {
	p := newPair(t, 8<<10)
	p.writes.signal = make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- p.batch.WriteThrough(p.srv, payload(4<<20), nil) }()
	// The gathered 4 MiB are being written, to a client that reads
	// none: the write waits for the socket.
	<-p.writes.signal
	closed := make(chan error, 1)
	go func() { closed <- p.srv.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a write the client never takes")
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the stuck write succeeded after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stuck write did not end at Close")
	}
}

// TestCloseAfterAWriteSendsEverything: the alert Close writes comes after
// the records written before it: the client reads all, then io.EOF.
func TestCloseAfterAWriteSendsEverything(t *testing.T) {
	p := newPair(t, 0)
	want := payload(100 << 10)
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(p.cli); got <- b }()
	if err := p.batch.WriteThrough(p.srv, want, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the client read %d bytes before the end, want %d", len(b), len(want))
	}
}

// TestLateRecordsAreBounded: what crypto/tls writes while a
// WriteThrough's records wait for a client that does not read (an answer
// to each KeyUpdate it asks for, written from the reader) is gathered up
// to maxLate; the write past it fails, which fails the connection,
// instead of the buffer growing for as long as the stuck write lasts.
func TestLateRecordsAreBounded(t *testing.T) {
	p := newPair(t, 8<<10)
	p.writes.signal = make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- p.batch.WriteThrough(p.srv, payload(4<<20), nil) }()
	<-p.writes.signal // the 4 MiB wait for the socket
	record := make([]byte, 1<<10)
	gathered := 0
	for {
		if _, err := p.batch.Write(record); err != nil {
			if !errors.Is(err, ErrLateRecords) {
				t.Fatalf("late record: %v, want ErrLateRecords", err)
			}
			break
		}
		gathered += len(record)
		if gathered > 2*maxLate {
			t.Fatalf("%d bytes of late records gathered, want at most %d", gathered, maxLate)
		}
	}
	if gathered < maxLate-len(record) {
		t.Fatalf("late records refused after %d bytes, want up to %d", gathered, maxLate)
	}
	p.srv.Close()
	if err := <-done; err == nil {
		t.Fatal("the stuck write succeeded after Close")
	}
}
