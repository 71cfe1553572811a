package h2client

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/envgate/envgate/echo/echoserver"
	"github.com/envgate/envgate/proto/echopb"
)

// server is a real gRPC echo server on loopback.
type server struct {
	addr  string
	conns atomic.Int32 // connections accepted
	// seen receives each call's incoming context once its handler ends.
	seen chan context.Context
}

func startServer(t *testing.T, opts ...grpc.ServerOption) *server {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: lis.Addr().String(), seen: make(chan context.Context, 100)}
	opts = append(opts, grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		err := h(srv, ss)
		select {
		case s.seen <- ss.Context():
		default:
		}
		return err
	}), grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		select {
		case s.seen <- ctx:
		default:
		}
		return resp, err
	}))
	srv := grpc.NewServer(opts...)
	echoserver.Register(srv, &echoserver.Server{Env: "env1", Addr: s.addr})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(countingListener{lis, &s.conns})
	}()
	t.Cleanup(func() { srv.Stop(); <-done })
	return s
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func newClient(t *testing.T, opts Options, addrs ...string) (*Client, echopb.EchoServiceClient) {
	t.Helper()
	cl := New("app-service.env1", opts)
	cl.Update(addrs)
	t.Cleanup(func() { _ = cl.Close() })
	return cl, echopb.NewEchoServiceClient(cl)
}

// waitReady waits until n endpoints take calls: calls made before would all
// go to the endpoints connected first.
func waitReady(t *testing.T, cl *Client, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(*cl.ready.Load()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d endpoints ready after 10 s, want %d", len(*cl.ready.Load()), n)
		}
		time.Sleep(time.Millisecond) // polling the ready set, not synchronisation
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEveryMethodKind(t *testing.T) {
	s := startServer(t)
	_, c := newClient(t, Options{}, s.addr)
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "env", "env1")

	var p peer.Peer
	resp, err := c.Call(ctx, &echopb.EchoRequest{}, grpc.Peer(&p))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Hello World! ServerEnv:env1, ClientEnv:env1"; resp.GetMessage() != want {
		t.Fatalf("unary: %q", resp.GetMessage())
	}
	if p.Addr == nil || p.Addr.String() != s.addr {
		t.Fatalf("peer %v, want %s", p.Addr, s.addr)
	}

	ss, err := c.ServerStream(ctx, &echopb.EchoRequest{Count: 5})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := ss.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
		n++
	}
	if n != 5 {
		t.Fatalf("server stream: %d messages, want 5", n)
	}

	cs, err := c.ClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 7 {
		if err := cs.Send(&echopb.EchoRequest{Text: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := cs.CloseAndRecv()
	if err != nil || r.GetReceivedMessages() != 7 {
		t.Fatalf("client stream: %v, %d messages", err, r.GetReceivedMessages())
	}

	bs, err := c.BidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := bs.Send(&echopb.EchoRequest{Text: "ping"}); err != nil {
			t.Fatal(err)
		}
		r, err := bs.Recv()
		if err != nil || r.GetEcho() != "ping" {
			t.Fatalf("bidi %d: %v %q", i, err, r.GetEcho())
		}
	}
	if err := bs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("bidi end: %v", err)
	}
}

func TestMetadataHeadersTrailersAndStatus(t *testing.T) {
	s := startServer(t)
	_, c := newClient(t, Options{UserAgent: "envgate/test"}, s.addr)
	ctx := metadata.NewOutgoingContext(testCtx(t), metadata.Pairs(
		"env", "env1", "x-multi", "a", "x-multi", "b", "trace-bin", string([]byte{0, 1, 2, 255})))
	var hdr, tr metadata.MD
	resp, err := c.Call(ctx, &echopb.EchoRequest{
		IncludeDetails:   true,
		ResponseHeaders:  map[string][]byte{"x-h": []byte("hv"), "h-bin": {9, 0, 9}},
		ResponseTrailers: map[string][]byte{"x-t": []byte("tv")},
	}, grpc.Header(&hdr), grpc.Trailer(&tr))
	if err != nil {
		t.Fatal(err)
	}
	got := resp.GetRequestMetadata()
	for k, want := range map[string]string{"env": "env1", "x-multi": "a,b", "trace-bin": string([]byte{0, 1, 2, 255})} {
		if string(got[k]) != want {
			t.Errorf("server saw %s=%q, want %q", k, got[k], want)
		}
	}
	if ua := string(got["user-agent"]); ua != "envgate/test" {
		t.Errorf("user-agent %q", ua)
	}
	if strings.Join(hdr["x-h"], ",") != "hv" || strings.Join(hdr["h-bin"], ",") != string([]byte{9, 0, 9}) {
		t.Errorf("headers: %v", hdr)
	}
	if strings.Join(tr["x-t"], ",") != "tv" {
		t.Errorf("trailers: %v", tr)
	}

	// The client's own user-agent wins over the configured one.
	uaCtx := metadata.AppendToOutgoingContext(ctx, "user-agent", "my-client/1.0")
	if resp, err := c.Call(uaCtx, &echopb.EchoRequest{IncludeDetails: true}); err != nil || string(resp.GetRequestMetadata()["user-agent"]) != "my-client/1.0" {
		t.Errorf("forwarded user-agent: %v %q", err, resp.GetRequestMetadata()["user-agent"])
	}

	// A failure before any message: trailers-only, with its message
	// percent-decoded and its trailers.
	tr = nil
	_, err = c.Call(ctx, &echopb.EchoRequest{StatusCode: int32(codes.PermissionDenied), StatusMessage: "no ✓ 100%",
		ResponseTrailers: map[string][]byte{"x-why": []byte("because")}}, grpc.Trailer(&tr))
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != "no ✓ 100%" {
		t.Fatalf("status: %v", err)
	}
	if strings.Join(tr["x-why"], ",") != "because" {
		t.Errorf("trailers-only trailers: %v", tr)
	}
}

func TestDeadlineAndCancelReachTheServer(t *testing.T) {
	s := startServer(t)
	_, c := newClient(t, Options{}, s.addr)

	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	_, err := c.Call(ctx, &echopb.EchoRequest{SleepMs: 10_000})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("deadline: %v", err)
	}
	if sctx := <-s.seen; sctx.Err() == nil {
		t.Fatal("the server's call did not end with the deadline")
	}

	ctx, cancel = context.WithCancel(testCtx(t))
	ss, err := c.ServerStream(ctx, &echopb.EchoRequest{SleepMs: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := ss.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("cancel: %v", err)
	}
	s.waitCanceled(t)
}

// registering is a cancelable context with an AfterFunc method of its
// own, as h2front's stream contexts have: it counts the registrations.
type registering struct {
	context.Context
	asked atomic.Int32
}

func (r *registering) AfterFunc(f func()) func() bool {
	r.asked.Add(1)
	return context.AfterFunc(r.Context, f)
}

// A call's context that has an AfterFunc method of its own is watched
// through it (watch), not through context.AfterFunc, which would register
// a context of its own with the cancelCtx under it: canceling it still
// ends the call, and the server sees the cancel.
func TestStreamWatchesItsContextThroughItsAfterFunc(t *testing.T) {
	s := startServer(t)
	cl, _ := newClient(t, Options{}, s.addr)
	inner, cancel := context.WithCancel(testCtx(t))
	ctx := &registering{Context: inner}
	cs := sleepingStream(t, cl, ctx)
	if n := ctx.asked.Load(); n != 1 {
		t.Fatalf("the context's AfterFunc was asked %d times, want 1", n)
	}
	cancel()
	if err := cs.RecvMsg(new(echopb.EchoResponse)); status.Code(err) != codes.Canceled {
		t.Fatalf("after the cancel: %v, want CANCELED", err)
	}
	s.waitCanceled(t)
}

// sleepingStream opens a server stream whose answer the server holds back
// for 10 s: a call in flight for a test to end.
func sleepingStream(t *testing.T, cl *Client, ctx context.Context) grpc.ClientStream {
	t.Helper()
	cs, err := cl.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/echo.EchoService/ServerStream")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(&echopb.EchoRequest{SleepMs: 10_000}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	return cs
}

// waitCanceled waits for the server's next call to end canceled.
func (s *server) waitCanceled(t *testing.T) {
	t.Helper()
	select {
	case sctx := <-s.seen:
		if !errors.Is(sctx.Err(), context.Canceled) {
			t.Fatalf("server context: %v", sctx.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server never saw the cancel")
	}
}

// Abort ends a stream as canceling its context would, with the context
// left alone: the caller that waits gets CANCELED and the server sees the
// call canceled (RST_STREAM CANCEL). A stream that ended is left as it is.
func TestAbortEndsTheStreamNotItsContext(t *testing.T) {
	s := startServer(t)
	cl, _ := newClient(t, Options{}, s.addr)
	ctx := testCtx(t)

	cs := sleepingStream(t, cl, ctx)
	cs.(interface{ Abort() }).Abort()
	if err := cs.RecvMsg(new(echopb.EchoResponse)); status.Code(err) != codes.Canceled {
		t.Fatalf("after Abort: %v, want CANCELED", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Abort canceled the stream's context")
	}
	s.waitCanceled(t)

	// A stream that ended keeps its status.
	cs, err := cl.NewStream(ctx, &grpc.StreamDesc{}, "/echo.EchoService/Call")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(&echopb.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(new(echopb.EchoResponse)); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(new(echopb.EchoResponse)); err != io.EOF {
		t.Fatalf("end of the call: %v", err)
	}
	cs.(interface{ Abort() }).Abort()
	if err := cs.RecvMsg(new(echopb.EchoResponse)); err != io.EOF {
		t.Fatalf("after Abort of an ended call: %v, want io.EOF", err)
	}
}

func TestLargeMessagesBothWays(t *testing.T) {
	s := startServer(t, grpc.MaxRecvMsgSize(32<<20), grpc.MaxSendMsgSize(32<<20))
	_, c := newClient(t, Options{MaxRecvMsgSize: 16 << 20}, s.addr)
	ctx := testCtx(t)
	payload := make([]byte, 9<<20) // far over every flow-control window
	for i := range payload {
		payload[i] = byte(i)
	}
	cs, err := c.ClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.Send(&echopb.EchoRequest{Payload: payload, ResponseSize: 12 << 20}); err != nil {
		t.Fatal(err)
	}
	resp, err := cs.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetReceivedBytes() < int64(len(payload)) || len(resp.GetPayload()) != 12<<20 {
		t.Fatalf("server got %d bytes, sent %d", resp.GetReceivedBytes(), len(resp.GetPayload()))
	}

	// Over the receive limit: RESOURCE_EXHAUSTED, and the connection lives on.
	_, err = c.Call(ctx, &echopb.EchoRequest{ResponseSize: 17 << 20})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "larger than max") {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
		t.Fatal(err)
	}

	// Many concurrent streams, each with more than its window.
	if err := concurrently(20, func() error {
		_, err := c.Call(ctx, &echopb.EchoRequest{Payload: payload[:600<<10], ResponseSize: 700 << 10})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// concurrently runs call n times at once and returns the first error.
func concurrently(n int, call func() error) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() { errs <- call() })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func TestBalancesPerCall(t *testing.T) {
	a, b := startServer(t), startServer(t)
	cl, c := newClient(t, Options{}, a.addr, b.addr)
	ctx := testCtx(t)
	waitReady(t, cl, 2)
	count := map[string]int{}
	for range 40 {
		resp, err := c.Call(ctx, &echopb.EchoRequest{IncludeDetails: true})
		if err != nil {
			t.Fatal(err)
		}
		count[resp.GetServer()]++
	}
	if count[a.addr] < 10 || count[b.addr] < 10 {
		t.Fatalf("calls per endpoint: %v", count)
	}
	if a.conns.Load() != 1 || b.conns.Load() != 1 {
		t.Fatalf("connections: %d and %d, want one each", a.conns.Load(), b.conns.Load())
	}

	// An endpoint removed takes no new calls.
	cl.Update([]string{b.addr})
	for range 10 {
		resp, err := c.Call(ctx, &echopb.EchoRequest{IncludeDetails: true})
		if err != nil || resp.GetServer() != b.addr {
			t.Fatalf("after removal: %v from %s", err, resp.GetServer())
		}
	}
}

func TestUnreachableEndpoints(t *testing.T) {
	dead := func() string {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := lis.Addr().String()
		lis.Close()
		return addr
	}()
	s := startServer(t)
	_, c := newClient(t, Options{}, dead, s.addr)
	ctx := testCtx(t)
	for range 20 {
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
			t.Fatalf("with one live endpoint: %v", err)
		}
	}

	_, c = newClient(t, Options{}, dead)
	_, err := c.Call(ctx, &echopb.EchoRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "connection refused") {
		t.Fatalf("only a dead endpoint: %v", err)
	}
}

func TestGoAwayMovesCallsToANewConnection(t *testing.T) {
	// The server ends every connection after 50 ms with GOAWAY.
	s := startServer(t, grpc.KeepaliveParams(keepalive.ServerParameters{
		MaxConnectionAge: 50 * time.Millisecond, MaxConnectionAgeGrace: 5 * time.Second}))
	_, c := newClient(t, Options{}, s.addr)
	ctx := testCtx(t)
	// A stream open across the GOAWAY finishes.
	ss, err := c.ServerStream(ctx, &echopb.EchoRequest{Count: 1, SleepMs: 300})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(500 * time.Millisecond)
	calls := 0
	for time.Now().Before(deadline) || s.conns.Load() < 3 {
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
			t.Fatalf("call %d: %v", calls, err)
		}
		calls++
	}
	if _, err := ss.Recv(); err != nil {
		t.Fatalf("stream across GOAWAY: %v", err)
	}
	t.Logf("%d calls over %d connections", calls, s.conns.Load())
}

// A backend's SETTINGS_MAX_CONCURRENT_STREAMS opens further connections
// to it, as Envoy's HTTP/2 pool does (before: every other caller waited on
// the one connection, and 0 of 20 calls succeeded while 10 slow ones ran).
func TestUpstreamStreamLimit(t *testing.T) {
	s := startServer(t, grpc.MaxConcurrentStreams(10))
	_, c := newClient(t, Options{}, s.addr)
	ctx := testCtx(t)
	// Ten streams hold the first connection's ten slots.
	var held []grpc.BidiStreamingClient[echopb.EchoRequest, echopb.EchoResponse]
	for range 10 {
		bs, err := c.BidiStream(ctx)
		if err == nil {
			err = bs.Send(&echopb.EchoRequest{})
		}
		if err == nil {
			_, err = bs.Recv()
		}
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, bs)
	}
	if err := concurrently(20, func() error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := c.Call(ctx, &echopb.EchoRequest{})
		return err
	}); err != nil {
		t.Fatalf("a call while 10 slow ones hold the first connection's streams: %v", err)
	}
	if n := s.conns.Load(); n < 2 {
		t.Fatalf("%d connections, want a second one for the calls over the limit", n)
	}
	for _, bs := range held {
		_ = bs.CloseSend()
		if _, err := bs.Recv(); err != io.EOF {
			t.Fatalf("a held stream: %v", err)
		}
	}
}

func TestNonGRPCAnswer(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h2c.NewHandler(http.NotFoundHandler(), &http2.Server{})}
	go func() { _ = hs.Serve(lis) }()
	t.Cleanup(func() { _ = hs.Close() })
	_, c := newClient(t, Options{}, lis.Addr().String())
	_, err = c.Call(testCtx(t), &echopb.EchoRequest{})
	if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "404") {
		t.Fatalf("404 answer: %v", err)
	}
}

func TestClose(t *testing.T) {
	s := startServer(t)
	cl, c := newClient(t, Options{}, s.addr)
	ctx := testCtx(t)
	ss, err := c.ServerStream(ctx, &echopb.EchoRequest{SleepMs: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	_ = cl.Close() // returns once every goroutine of the client ended
	if _, err := ss.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("stream on a closed client: %v", err)
	}
	if _, err := c.Call(ctx, &echopb.EchoRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("call on a closed client: %v", err)
	}
}

// Calls that arrive while the first connection is still being made wait
// for it; none may miss its readiness and wait forever.
func TestCallsDuringFirstConnect(t *testing.T) {
	s := startServer(t)
	for round := range 30 {
		_, c := newClient(t, Options{}, s.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := concurrently(20, func() error {
			_, err := c.Call(ctx, &echopb.EchoRequest{})
			return err
		})
		cancel()
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
}

// Response headers larger than a frame arrive as HEADERS and CONTINUATION
// frames and come out whole, and the connection's HPACK state stays in
// step for the calls after.
func TestLargeResponseHeaders(t *testing.T) {
	s := startServer(t)
	_, c := newClient(t, Options{}, s.addr)
	ctx := testCtx(t)
	big := strings.Repeat("v", 40<<10)
	for i := range 3 {
		var hdr, tr metadata.MD
		_, err := c.Call(ctx, &echopb.EchoRequest{
			ResponseHeaders:  map[string][]byte{"x-big": []byte(big), "x-i": []byte{byte('0' + i)}},
			ResponseTrailers: map[string][]byte{"x-big-t": []byte(big)},
		}, grpc.Header(&hdr), grpc.Trailer(&tr))
		if err != nil {
			t.Fatal(err)
		}
		if len(hdr["x-big"]) != 1 || hdr["x-big"][0] != big || hdr["x-i"][0] != string(rune('0'+i)) || len(tr["x-big-t"]) != 1 || tr["x-big-t"][0] != big {
			t.Fatalf("call %d: headers or trailers not whole", i)
		}
	}
}

// Least request sends fewer calls to the endpoint that is slower (more
// calls in flight there), where round robin gives each half. Envoy's
// LEAST_REQUEST with two choices (source/extensions/load_balancing_policies/
// least_request, LeastRequestLoadBalancer::unweightedHostPick), Istio's
// default balancer.
func TestLeastRequestAvoidsTheBusyEndpoint(t *testing.T) {
	slowdown := grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		time.Sleep(50 * time.Millisecond)
		return h(ctx, req)
	})
	slow, fast := startServer(t, slowdown), startServer(t)
	count := func(b Balancer) map[string]int {
		cl, c := newClient(t, Options{Balancer: b}, slow.addr, fast.addr)
		ctx := testCtx(t)
		waitReady(t, cl, 2)
		var mu sync.Mutex
		n := map[string]int{}
		if err := concurrently(8, func() error {
			for range 25 {
				resp, err := c.Call(ctx, &echopb.EchoRequest{IncludeDetails: true})
				if err != nil {
					return err
				}
				mu.Lock()
				n[resp.GetServer()]++
				mu.Unlock()
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	lr, rr := count(LeastRequest), count(RoundRobin)
	t.Logf("least request: %d slow, %d fast; round robin: %d slow, %d fast", lr[slow.addr], lr[fast.addr], rr[slow.addr], rr[fast.addr])
	// With two endpoints both candidates are the slow one a quarter of
	// the time, so about a quarter of the calls go there; round robin
	// sends half.
	if lr[slow.addr]*5 > (lr[slow.addr]+lr[fast.addr])*2 {
		t.Fatalf("least request sent %d of %d calls to the slow endpoint, want under 40%%", lr[slow.addr], lr[slow.addr]+lr[fast.addr])
	}
}

// An endpoint that answers UNAVAILABLE (trailers-only, as a server that
// refuses calls does) is ejected after 5 in a row and takes no calls for
// the ejection time (Envoy: router.cc Filter::onUpstreamHeaders maps the
// grpc-status to 503, outlier_detection_impl.cc
// DetectorHostMonitorImpl::putHttpResponseCode counts it as a gateway
// error).
func TestUnavailableEndpointIsEjected(t *testing.T) {
	refuse := grpc.ChainUnaryInterceptor(func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
		return nil, status.Error(codes.Unavailable, "shutting down")
	})
	bad, good := startServer(t, refuse), startServer(t)
	cl, c := newClient(t, Options{}, bad.addr, good.addr)
	ctx := testCtx(t)
	waitReady(t, cl, 2)
	failed := 0
	for range 50 {
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
			failed++
		}
	}
	if failed != 5 {
		t.Fatalf("%d of 50 calls failed, want the 5 that eject the endpoint", failed)
	}
	if ej := cl.Ejected(); len(ej) != 1 || ej[0] != bad.addr {
		t.Fatalf("ejected: %v", ej)
	}
}

// At most MaxEjectionPercent of the endpoints are ejected, with Envoy's
// rule (DetectorImpl::ejectHost: the share ejected before this one must be
// under the maximum): of two failing endpoints one is ejected, and calls
// still reach the other rather than failing as "no healthy upstream".
func TestEjectionIsBounded(t *testing.T) {
	refuse := grpc.ChainUnaryInterceptor(func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
		return nil, status.Error(codes.Unavailable, "shutting down")
	})
	a, b := startServer(t, refuse), startServer(t, refuse)
	cl, c := newClient(t, Options{}, a.addr, b.addr)
	ctx := testCtx(t)
	waitReady(t, cl, 2)
	for range 30 {
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
			t.Fatalf("call: %v", err)
		}
	}
	if ej := cl.Ejected(); len(ej) != 1 {
		t.Fatalf("ejected: %v, want one of two", ej)
	}
}

// An ejected endpoint takes no calls while another is still connecting:
// the calls wait for that connection, as Envoy sends them to a healthy host
// and waits in its connection pool (Envoy: load_balancer_impl.cc
// LoadBalancerBase::isHostSetInPanic counts hosts, connected or not, so one
// ejected host of two is no panic). Before, the ready set counted only
// connected endpoints, and an endpoint ejected before its peers connected
// took every call until they did (seen in CI: a DestinationRule's ejected
// endpoint took 8 calls instead of 3).
func TestEjectedEndpointWaitsForOneStillConnecting(t *testing.T) {
	var refused atomic.Int32
	refuse := grpc.ChainUnaryInterceptor(func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
		refused.Add(1)
		return nil, status.Error(codes.Unavailable, "shutting down")
	})
	bad, good := startServer(t, refuse), startServer(t)
	release := make(chan struct{})
	var d net.Dialer
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		if addr == good.addr {
			select { // good stays connecting until released
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return d.DialContext(ctx, "tcp", addr)
	}
	cl, c := newClient(t, Options{Dial: dial}, bad.addr, good.addr)
	ctx := testCtx(t)
	waitReady(t, cl, 1)
	for range 5 {
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); status.Code(err) != codes.Unavailable {
			t.Fatalf("call to the failing endpoint: %v", err)
		}
	}
	if ej := cl.Ejected(); len(ej) != 1 || ej[0] != bad.addr {
		t.Fatalf("ejected: %v, want %s", ej, bad.addr)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, &echopb.EchoRequest{})
		done <- err
	}()
	// Either the call waits for the connecting endpoint, or (the defect) it
	// went to the ejected one and ended.
	var err error
	waiting := false
	for !waiting {
		select {
		case err = <-done:
			t.Fatalf("the call ended before the healthy endpoint connected: %v (%d calls reached the ejected endpoint)", err, refused.Load())
		default:
			waiting = cl.waiting.Load() == 1
		}
		if !waiting {
			time.Sleep(time.Millisecond) // polling the client's state, not synchronisation
		}
	}
	close(release)
	if err = <-done; err != nil {
		t.Fatalf("the call after the healthy endpoint connected: %v", err)
	}
	if n := refused.Load(); n != 5 {
		t.Fatalf("the ejected endpoint got %d calls, want the 5 that ejected it", n)
	}
}

// A backend that comes back after an outage is used within about a second,
// not after the rest of its grown back-off: a call that finds every
// endpoint failing cuts one endpoint's back-off short, at most once a
// second (before: calls kept failing fast for up to the whole back-off,
// 13.8 s after a 30 s outage).
func TestBackendBackAfterAnOutageIsUsedPromptly(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // down
	cl := New("app-service.env1", Options{})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{addr})
	c := echopb.NewEchoServiceClient(cl)
	ctx := testCtx(t)
	// Ten seconds of outage with calls failing: the back-off has grown to
	// about 6.5 s (1 s, x1.6 after each failed attempt).
	outage := time.Now().Add(10 * time.Second)
	for time.Now().Before(outage) {
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); status.Code(err) != codes.Unavailable {
			t.Fatalf("during the outage: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // a client's pace, not synchronisation
	}
	// Back on the same address.
	lis, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	echoserver.Register(srv, &echoserver.Server{Env: "env1", Addr: addr})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	back := time.Now()
	for {
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); err == nil {
			break
		}
		if time.Since(back) > 10*time.Second {
			t.Fatal("the backend was not used again within 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := time.Since(back); d > 1500*time.Millisecond {
		t.Fatalf("first call served %v after the backend came back, want within about a second", d)
	} else {
		t.Logf("served again %v after the backend came back", d)
	}
}

// forwarding is the upstream stream as a proxy that forwards bytes sees it.
type forwarding interface {
	Forward()
	RecvForwarded(*Forwarded) error
	Ready() bool
}

// forwardedCall opens a ServerStream call of count messages of size bytes
// each, switches it to forwarding (after its first message is queued,
// when queuedFirst) and returns every byte handed over, what RecvForwarded
// counted, and the error that ended it.
func forwardedCall(t *testing.T, cl *Client, count, size int, queuedFirst bool) (wire []byte, msgs, payload int, err error) {
	t.Helper()
	ctx := testCtx(t)
	cs, err := cl.NewStream(ctx, &echopb.EchoService_ServiceDesc.Streams[0], echopb.EchoService_ServerStream_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(&echopb.EchoRequest{Count: int32(count), ResponseSize: int32(size)}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Header(); err != nil {
		t.Fatal(err)
	}
	fw := cs.(forwarding)
	if queuedFirst {
		// Messages the stream split before the switch become bytes again.
		deadline := time.Now().Add(10 * time.Second)
		for !fw.Ready() {
			if time.Now().After(deadline) {
				t.Fatal("no message in 10 s")
			}
			time.Sleep(time.Millisecond) // polling Ready, not synchronisation
		}
	}
	fw.Forward()
	var in Forwarded
	for {
		if err = fw.RecvForwarded(&in); err != nil {
			return wire, msgs, payload, err
		}
		for _, b := range in.Data {
			wire = append(wire, b...)
		}
		msgs += in.Messages
		payload += in.Payload
		in.Free()
	}
}

func TestForwardHandsOverTheWireBytes(t *testing.T) {
	s := startServer(t)
	cl, _ := newClient(t, Options{}, s.addr)
	for _, queued := range []bool{false, true} {
		// 300 messages of 1 KiB: more than a stream's window, so the
		// window must come back as bytes are handed over.
		wire, msgs, payload, err := forwardedCall(t, cl, 300, 1024, queued)
		if !errors.Is(err, io.EOF) {
			t.Fatalf("queued first %v: ended with %v, want io.EOF", queued, err)
		}
		// What was handed over parses as the server's messages, whole.
		n, body := 0, 0
		for rest := wire; len(rest) > 0; n++ {
			if len(rest) < 5 || rest[0] != 0 {
				t.Fatalf("queued first %v: message %d: bad prefix % x", queued, n, rest[:min(5, len(rest))])
			}
			size := int(binary.BigEndian.Uint32(rest[1:5]))
			var resp echopb.EchoResponse
			if err := proto.Unmarshal(rest[5:5+size], &resp); err != nil || len(resp.GetPayload()) != 1024 {
				t.Fatalf("queued first %v: message %d: %v, payload %d bytes", queued, n, err, len(resp.GetPayload()))
			}
			body += size
			rest = rest[5+size:]
		}
		if n != 300 || msgs != 300 || payload != body {
			t.Fatalf("queued first %v: %d messages parsed, %d counted; payload %d counted, %d parsed", queued, n, msgs, payload, body)
		}
	}
}

func TestForwardHoldsMessagesToTheLimit(t *testing.T) {
	s := startServer(t)
	cl, _ := newClient(t, Options{MaxRecvMsgSize: 4000}, s.addr)
	ctx := testCtx(t)
	cs, err := cl.NewStream(ctx, &echopb.EchoService_ServiceDesc.Streams[2], echopb.EchoService_BidiStream_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	fw := cs.(forwarding)
	// The first answer, within the limit, comes before the switch; the
	// second, over it, after: the call fails RESOURCE_EXHAUSTED, and
	// nothing of the second, not even its prefix, is handed over.
	if err := cs.SendMsg(&echopb.EchoRequest{ResponseSize: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Header(); err != nil {
		t.Fatal(err)
	}
	fw.Forward()
	var in Forwarded
	if err := fw.RecvForwarded(&in); err != nil || in.Messages != 1 {
		t.Fatalf("first answer: %v, %d messages", err, in.Messages)
	}
	in.Free()
	if err := cs.SendMsg(&echopb.EchoRequest{ResponseSize: 8000}); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if err = fw.RecvForwarded(&in); err != nil {
			break
		}
		for _, b := range in.Data {
			n += len(b)
		}
		in.Free()
	}
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "larger than max") {
		t.Fatalf("over the limit: %v, want RESOURCE_EXHAUSTED", err)
	}
	if n > 0 {
		t.Fatalf("%d bytes of a message over the limit were handed over", n)
	}
}

// TestReadBufferGrowsForStreamsOfSmallFrames: a connection that carries
// small calls keeps the small read buffer; one that streams small
// messages (a frame each) gets the large one once reads keep filling it.
func TestReadBufferGrowsForStreamsOfSmallFrames(t *testing.T) {
	s := startServer(t)
	cl, c := newClient(t, Options{}, s.addr)
	ctx := testCtx(t)
	for range 50 {
		if _, err := c.Call(ctx, &echopb.EchoRequest{ResponseSize: 100}); err != nil {
			t.Fatal(err)
		}
	}
	conn := (*(*cl.ready.Load())[0].conns.Load())[0]
	// Read after the calls returned: the reader replaces the buffer only
	// on a DATA frame, before it wakes the call that frame is for.
	if size := conn.src.br.Size(); size != initialReadBuffer {
		t.Fatalf("after small calls the read buffer is %d bytes, want %d", size, initialReadBuffer)
	}
	ss, err := c.ServerStream(ctx, &echopb.EchoRequest{Count: 2000, ResponseSize: 1024})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := ss.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
	}
	if size := conn.src.br.Size(); size != largeReadBuffer {
		t.Fatalf("after a stream of 2,000 1 KiB messages the read buffer is %d bytes, want %d", size, largeReadBuffer)
	}
}

// OnRead is told every byte read from the upstream: a 3 MiB answer is at
// least 3 MiB of reads (frames and headers besides), counted before the
// call returns it.
func TestOnReadCountsWhatTheUpstreamSent(t *testing.T) {
	s := startServer(t)
	var read atomic.Int64
	_, c := newClient(t, Options{MaxRecvMsgSize: 8 << 20, OnRead: func(n int) { read.Add(int64(n)) }}, s.addr)
	resp, err := c.Call(testCtx(t), &echopb.EchoRequest{ResponseSize: 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if n := read.Load(); n < int64(len(resp.GetPayload())) {
		t.Fatalf("OnRead counted %d bytes for a %d-byte answer", n, len(resp.GetPayload()))
	}
}
