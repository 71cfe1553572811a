package h2client

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/envgate/envgate/echo/echoserver"
	"github.com/envgate/envgate/internal/countconn"
	"github.com/envgate/envgate/internal/testca"
	"github.com/envgate/envgate/proto/echopb"
)

// slowListener's connections read no faster than perSecond bytes a
// second, with a small receive buffer: an upstream that takes a large
// request slowly.
type slowListener struct {
	net.Listener
	perSecond int
}

func (l slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil || l.perSecond == 0 {
		return c, err
	}
	_ = c.(*net.TCPConn).SetReadBuffer(16 << 10)
	return &slowConn{Conn: c, perSecond: l.perSecond, start: time.Now()}, nil
}

type slowConn struct {
	net.Conn
	perSecond int
	start     time.Time
	n         int
}

func (c *slowConn) Read(b []byte) (int, error) {
	b = b[:min(len(b), 4<<10)]
	time.Sleep(time.Until(c.start.Add(time.Duration(c.n) * time.Second / time.Duration(c.perSecond)))) // the upstream's pace
	n, err := c.Conn.Read(b)
	c.n += n
	return n, err
}

// startTLSServer is a gRPC echo server over TLS on loopback, reading
// perSecond bytes a second when above 0, with windows large enough that
// the client's writes are bounded by the socket, not flow control.
func startTLSServer(t *testing.T, ca *testca.CA, perSecond int) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert := ca.Issue(t, testca.Leaf{DNS: []string{"upstream"}}).TLS(t)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})),
		grpc.InitialWindowSize(8<<20), grpc.InitialConnWindowSize(8<<20))
	echoserver.Register(srv, &echoserver.Server{Env: "env1", Addr: lis.Addr().String()})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(slowListener{lis, perSecond}) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

// countingDial dials with a small send buffer, counting the writes that
// reach each socket in writes.
func countingDial(writes *atomic.Int64) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		_ = nc.(*net.TCPConn).SetWriteBuffer(16 << 10)
		return countconn.Conn{Conn: nc, Writes: writes}, nil
	}
}

// TestTLSRequestRecordsInOneWrite: a 64 KiB request to a TLS upstream,
// five records, goes to the socket in one or two writes (tlsbatch), not
// one a record.
func TestTLSRequestRecordsInOneWrite(t *testing.T) {
	ca := testca.New(t, "h2client test")
	addr := startTLSServer(t, ca, 0)
	var writes atomic.Int64
	_, c := newClient(t, Options{Dial: countingDial(&writes), TLS: &tls.Config{RootCAs: ca.Pool(), ServerName: "upstream", NextProtos: []string{"h2"}}}, addr)
	ctx := testCtx(t)
	payload := make([]byte, 64<<10)
	if _, err := c.Call(ctx, &echopb.EchoRequest{Payload: payload}); err != nil {
		t.Fatal(err) // the connection's start
	}
	for range 3 {
		before := writes.Load()
		if _, err := c.Call(ctx, &echopb.EchoRequest{Payload: payload}); err != nil {
			t.Fatal(err)
		}
		// The request's, and one for a WINDOW_UPDATE or PING answer.
		if n := writes.Load() - before; n > 2 {
			t.Fatalf("a 64 KiB request took %d socket writes, want at most 2", n)
		}
	}
}

// TestSlowTLSUpstreamTakesALargeRequest: a write to a TLS upstream that
// reads slowly but steadily goes on past its write timeout while bytes
// move, as a plaintext write does; inside crypto/tls the first timeout
// broke the connection and failed the call.
func TestSlowTLSUpstreamTakesALargeRequest(t *testing.T) {
	ca := testca.New(t, "h2client test")
	// 256 KiB a second: the 512 KiB request takes two seconds, each
	// write of up to highWater (256 KiB) more than three timeouts.
	addr := startTLSServer(t, ca, 256<<10)
	var writes atomic.Int64
	_, c := newClient(t, Options{Dial: countingDial(&writes), WriteTimeout: 300 * time.Millisecond,
		TLS: &tls.Config{RootCAs: ca.Pool(), ServerName: "upstream", NextProtos: []string{"h2"}}}, addr)
	cs, err := c.ClientStream(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.Send(&echopb.EchoRequest{Payload: make([]byte, 512<<10)}); err != nil {
		t.Fatal(err)
	}
	resp, err := cs.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetReceivedBytes(); got < 512<<10 {
		t.Fatalf("the upstream got %d bytes, want %d", got, 512<<10)
	}
}
