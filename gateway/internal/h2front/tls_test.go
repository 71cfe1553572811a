package h2front

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/envgate/envgate/gateway/internal/tlsbatch"
	"github.com/envgate/envgate/internal/countconn"
	"github.com/envgate/envgate/internal/testca"
)

// batchedTLS is a TLS connection with its records gathered per write, as
// sniff's are.
type batchedTLS struct {
	*tls.Conn
	b *tlsbatch.Conn
}

func (c batchedTLS) TLS() *tls.ConnectionState { st := c.ConnectionState(); return &st }

func (c batchedTLS) WriteBatched() func([]byte, func()) error {
	return func(p []byte, rearm func()) error { return c.b.WriteThrough(c.Conn, p, rearm) }
}

// serveTLS serves s over TLS (h2) on one loopback connection, whose
// socket writes are counted in writes, with sndbuf as its send buffer
// when above 0; it returns a client for it whose socket reads at most
// perSecond bytes a second when above 0.
func serveTLS(t *testing.T, s *Server, writes *atomic.Int64, sndbuf, perSecond int) *http.Client {
	t.Helper()
	ca := testca.New(t, "h2front test")
	cert := ca.Issue(t, testca.Leaf{DNS: []string{"test"}}).TLS(t)
	addr, _ := serveOne(t, s, func(nc net.Conn) net.Conn {
		if sndbuf > 0 {
			_ = nc.(*net.TCPConn).SetWriteBuffer(sndbuf)
		}
		b := tlsbatch.New(countconn.Conn{Conn: nc, Writes: writes})
		tc := tls.Server(b, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
		if err := tc.Handshake(); err != nil {
			t.Error(err)
		}
		return batchedTLS{Conn: tc, b: b}
	})
	tr := &http2.Transport{DialTLSContext: func(ctx context.Context, network, _ string, cfg *tls.Config) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if perSecond > 0 {
			_ = nc.(*net.TCPConn).SetReadBuffer(8 << 10)
			nc = &pacedConn{Conn: nc, r: pacedReader{r: nc, perSecond: perSecond, start: time.Now()}}
		}
		tc := tls.Client(nc, &tls.Config{RootCAs: ca.Pool(), ServerName: "test", NextProtos: []string{"h2"}})
		return tc, tc.HandshakeContext(ctx)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

type pacedConn struct {
	net.Conn
	r pacedReader
}

func (c *pacedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// TestTLSAnswerInOneWrite: a 64 KiB answer over TLS, five records, goes
// to the socket with its headers in one write (tlsbatch), not one a
// record.
func TestTLSAnswerInOneWrite(t *testing.T) {
	const size = 64 << 10
	var writes atomic.Int64
	s := New(http.NotFoundHandler(), Options{Relay: func(r *Request) bool {
		_ = r.WriteHead(200, nil, make([]byte, size), true)
		return true
	}})
	c := serveTLS(t, s, &writes, 0, 0)
	get := func() {
		resp, err := c.Get("https://test/")
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			t.Fatalf("read %d bytes (%v), want %d", n, err, size)
		}
	}
	get() // the connection's start: settings, and records sized to a segment
	for range 3 {
		before := writes.Load()
		get()
		if n := writes.Load() - before; n != 1 {
			t.Fatalf("a 64 KiB answer took %d socket writes, want 1", n)
		}
	}
}

// TestSlowTLSClientKeepsItsDownload is TestSlowClientKeepsItsDownload over
// TLS: a write that timed out having moved bytes goes on, where inside
// crypto/tls it would break the connection; each batched write here takes
// more than one write timeout.
func TestSlowTLSClientKeepsItsDownload(t *testing.T) {
	const size = 192 << 10
	s := New(http.NotFoundHandler(), Options{WriteTimeout: time.Second, Relay: func(r *Request) bool {
		_ = r.WriteHead(200, nil, make([]byte, size), true)
		return true
	}})
	var writes atomic.Int64
	// 48 KiB a second: four seconds, four write timeouts; a batch
	// (batchChunk) takes more than one.
	c := serveTLS(t, s, &writes, 8<<10, 48<<10)
	resp, err := c.Get("https://test/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != size {
		t.Fatalf("downloaded %d bytes (%v), want %d", n, err, size)
	}
}
