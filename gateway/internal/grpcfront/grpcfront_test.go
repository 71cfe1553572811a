package grpcfront_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/grpcfront"
	"github.com/envgate/envgate/gateway/internal/h2front"
	"github.com/envgate/envgate/internal/countconn"
)

// raw is a codec of byte slices, on both sides: messages pass as bytes.
type raw struct{}

func (raw) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (raw) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (raw) Name() string { return "proto" }

// serve runs an h2front server whose gRPC calls go to handler through
// grpcfront (and everything else, compressed calls included, to
// fallback), and returns a client connection to it.
func serve(t *testing.T, handler grpc.StreamHandler, fallback http.Handler, maxMessage int) *grpc.ClientConn {
	cc, _ := serveCounting(t, handler, fallback, maxMessage)
	return cc
}

// serveCounting is serve, with the count of the server's socket writes.
func serveCounting(t *testing.T, handler grpc.StreamHandler, fallback http.Handler, maxMessage int) (*grpc.ClientConn, *atomic.Int64) {
	t.Helper()
	calls := grpcfront.New(grpcfront.Options{Handler: handler, Codec: raw{}, MaxRecvMessage: maxMessage, MaxSendMessage: maxMessage})
	if fallback == nil {
		fallback = http.NotFoundHandler()
	}
	srv := h2front.New(fallback, h2front.Options{GRPC: calls.Serve})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	writes := new(atomic.Int64)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(countingListener{lis, writes}) }()
	t.Cleanup(func() { srv.Close(); <-done })
	// A fixed window turns off the client's BDP pings, whose
	// acknowledgements would be writes of their own.
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(raw{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, writes
}

type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countconn.Conn{Conn: c, Writes: l.writes}, nil
}

// A handler that holds each send (it has what follows in hand, as the
// proxy does when the upstream's next message or end is already in) has
// a unary answer's headers, message and trailers leave in one write; one
// that does not, in three.
func TestHeldSendsLeaveInOneWrite(t *testing.T) {
	cc, writes := serveCounting(t, func(_ any, ss grpc.ServerStream) error {
		var in []byte
		if err := ss.RecvMsg(&in); err != nil {
			return err
		}
		hold := string(in) == "hold"
		if hold {
			ss.(interface{ Hold() }).Hold()
		}
		if err := ss.SendHeader(metadata.Pairs("x-a", "b")); err != nil {
			return err
		}
		if hold {
			ss.(interface{ Hold() }).Hold()
		}
		return ss.SendMsg(&in)
	}, nil, 0)
	ctx := ctxT(t)
	if _, _, _, err := unary(ctx, cc, "/pkg.Svc/Warm", []byte("warm up")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		msg  string
		want int64
	}{{"hold", 1}, {"no hold", 3}} {
		before := writes.Load()
		out, hdr, _, err := unary(ctx, cc, "/pkg.Svc/Do", []byte(c.msg))
		if err != nil || string(out) != c.msg || hdr.Get("x-a")[0] != "b" {
			t.Fatalf("%s: %q %v %v", c.msg, out, hdr, err)
		}
		got := writes.Load() - before
		t.Logf("%s: %d writes", c.msg, got)
		if c.msg == "hold" && got != c.want {
			t.Errorf("%s: the answer took %d writes, want %d", c.msg, got, c.want)
		}
	}
}

var desc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// unary makes one call of msg and returns its answer, headers, trailers
// and error.
func unary(ctx context.Context, cc *grpc.ClientConn, method string, msg []byte) ([]byte, metadata.MD, metadata.MD, error) {
	var hdr, tr metadata.MD
	var out []byte
	err := cc.Invoke(ctx, method, &msg, &out, grpc.Header(&hdr), grpc.Trailer(&tr))
	return out, hdr, tr, err
}

// The handler sees what grpc-go's server gives its unknown-service
// handler: the method, the metadata (binary values decoded, :authority,
// user-agent, content-type; no reserved fields), the peer; the client sees
// the handler's headers, message and trailers.
func TestCallCarriesMetadataHeadersAndTrailers(t *testing.T) {
	type seen struct {
		method string
		sub    string
		md     metadata.MD
		peer   *peer.Peer
		ok     bool
	}
	got := make(chan seen, 1)
	cc := serve(t, func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		md, _ := metadata.FromIncomingContext(ss.Context())
		p, ok := peer.FromContext(ss.Context())
		sub := grpc.ServerTransportStreamFromContext(ss.Context()).(interface{ ContentSubtype() string }).ContentSubtype()
		got <- seen{method, sub, md, p, ok}
		var in []byte
		if err := ss.RecvMsg(&in); err != nil {
			return err
		}
		if err := ss.SendHeader(metadata.Pairs("x-head", "h1", "x-blob-bin", "\x00\xffhead")); err != nil {
			return err
		}
		out := append([]byte("echo:"), in...)
		if err := ss.SendMsg(&out); err != nil {
			return err
		}
		if err := ss.RecvMsg(&in); err != io.EOF {
			return fmt.Errorf("after the one message: %v, want io.EOF", err)
		}
		ss.SetTrailer(metadata.Pairs("x-tail", "t1", "x-tail-bin", "\x01\x02"))
		return nil
	}, nil, 0)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "env", "env1", "x-req-bin", "\xde\xad\xbe\xef")
	out, hdr, tr, err := unary(ctx, cc, "/pkg.Svc/Do", []byte("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "echo:hi" {
		t.Errorf("answer %q", out)
	}
	if hdr.Get("x-head")[0] != "h1" || hdr.Get("x-blob-bin")[0] != "\x00\xffhead" {
		t.Errorf("headers %v", hdr)
	}
	if tr.Get("x-tail")[0] != "t1" || tr.Get("x-tail-bin")[0] != "\x01\x02" {
		t.Errorf("trailers %v", tr)
	}
	s := <-got
	if s.method != "/pkg.Svc/Do" || s.sub != "proto" {
		t.Errorf("method %q, content subtype %q", s.method, s.sub)
	}
	for k, want := range map[string]string{"env": "env1", "x-req-bin": "\xde\xad\xbe\xef", "content-type": "application/grpc+proto"} {
		if v := s.md.Get(k); len(v) != 1 || v[0] != want {
			t.Errorf("metadata %s = %q, want %q", k, v, want)
		}
	}
	if a := s.md.Get(":authority"); len(a) != 1 || !strings.HasPrefix(a[0], "127.0.0.1:") {
		t.Errorf(":authority %q", a)
	}
	if ua := s.md.Get("user-agent"); len(ua) != 1 || !strings.Contains(ua[0], "grpc-go") {
		t.Errorf("user-agent %q", ua)
	}
	for _, k := range []string{"te", "grpc-timeout", ":path", ":method", "grpc-encoding"} {
		if v := s.md.Get(k); len(v) > 0 {
			t.Errorf("reserved %s in metadata: %q", k, v)
		}
	}
	if !s.ok || !strings.HasPrefix(s.peer.Addr.String(), "127.0.0.1:") || s.peer.AuthInfo != nil {
		t.Errorf("peer %+v (found %v)", s.peer, s.ok)
	}
}

// A status with a message to escape and details reaches the client whole,
// in trailers after a message, and in a trailers-only answer with the
// handler's trailer metadata.
func TestStatusReachesTheClient(t *testing.T) {
	st, err := status.New(codes.FailedPrecondition, "100% nicht möglich\n").WithDetails(&errdetails.ErrorInfo{Reason: "R", Domain: "d"})
	if err != nil {
		t.Fatal(err)
	}
	cc := serve(t, func(_ any, ss grpc.ServerStream) error {
		var in []byte
		if err := ss.RecvMsg(&in); err != nil {
			return err
		}
		if string(in) == "answer first" {
			if err := ss.SendMsg(&in); err != nil {
				return err
			}
		}
		ss.SetTrailer(metadata.Pairs("x-why", "because"))
		return st.Err()
	}, nil, 0)
	for _, msg := range []string{"answer first", "trailers only"} {
		t.Run(msg, func(t *testing.T) {
			out, hdr, tr, err := unary(ctxT(t), cc, "/pkg.Svc/Fail", []byte(msg))
			got := status.Convert(err)
			if got.Code() != codes.FailedPrecondition || got.Message() != st.Message() {
				t.Fatalf("status %v %q, want %v %q", got.Code(), got.Message(), st.Code(), st.Message())
			}
			if d := got.Details(); len(d) != 1 || d[0].(*errdetails.ErrorInfo).GetReason() != "R" {
				t.Errorf("details %v", d)
			}
			if tr.Get("x-why")[0] != "because" {
				t.Errorf("trailers %v", tr)
			}
			_ = out
			_ = hdr
		})
	}
}

// grpc-timeout becomes the handler's deadline, and a call past it ends
// DEADLINE_EXCEEDED.
// The call's context is its stream's (h2front's), with the client's
// grpc-timeout as its deadline, and has an AfterFunc of its own
// (callContext) for what derives from it to register with: a context
// derived from it ends with it, with its error. (Which error is a race:
// the server's deadline, or the client's cancel at its own, which comes
// as early. h2front's TestStreamContextDeadline has the deadline's.)
func TestTimeoutIsTheHandlersDeadline(t *testing.T) {
	deadline := make(chan time.Duration, 1)
	derivedErr := make(chan [2]error, 1)
	cc := serve(t, func(_ any, ss grpc.ServerStream) error {
		d, ok := ss.Context().Deadline()
		if !ok {
			deadline <- -1
		} else {
			deadline <- time.Until(d)
		}
		if _, ok := ss.Context().(interface{ AfterFunc(func()) func() bool }); !ok {
			t.Error("the call's context has no AfterFunc of its own")
		}
		derived, cancel := context.WithCancel(ss.Context())
		defer cancel()
		<-derived.Done()
		<-ss.Context().Done()
		derivedErr <- [2]error{derived.Err(), ss.Context().Err()}
		return ss.Context().Err()
	}, nil, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, _, _, err := unary(ctx, cc, "/pkg.Svc/Sleep", []byte("x"))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("call: %v, want DEADLINE_EXCEEDED", err)
	}
	if d := <-deadline; d <= 0 || d > 300*time.Millisecond {
		t.Errorf("handler's deadline in %v, want within the client's 300ms", d)
	}
	if errs := <-derivedErr; errs[0] == nil || errs[0] != errs[1] {
		t.Errorf("derived context: %v, the call's: %v", errs[0], errs[1])
	}
}

// A request message past the limit ends the call RESOURCE_EXHAUSTED
// without being read whole; one at the limit passes.
func TestRequestMessageLimit(t *testing.T) {
	const limit = 64 << 10
	cc := serve(t, func(_ any, ss grpc.ServerStream) error {
		var in []byte
		if err := ss.RecvMsg(&in); err != nil {
			return err
		}
		n := []byte(fmt.Sprint(len(in)))
		return ss.SendMsg(&n)
	}, nil, limit)
	out, _, _, err := unary(ctxT(t), cc, "/pkg.Svc/Big", make([]byte, limit))
	if err != nil || string(out) != fmt.Sprint(limit) {
		t.Fatalf("at the limit: %q %v", out, err)
	}
	_, _, _, err = unary(ctxT(t), cc, "/pkg.Svc/Big", make([]byte, limit+1))
	if s := status.Convert(err); s.Code() != codes.ResourceExhausted || !strings.Contains(s.Message(), "larger than max") {
		t.Fatalf("past the limit: %v", err)
	}
}

// Streams both ways keep their messages' order and ends, and a client that
// cancels ends the handler's context.
func TestStreamsAndCancel(t *testing.T) {
	ended := make(chan error, 1)
	cc := serve(t, func(_ any, ss grpc.ServerStream) error {
		for {
			var in []byte
			err := ss.RecvMsg(&in)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				ended <- err
				return err
			}
			out := bytes.ToUpper(in)
			if err := ss.SendMsg(&out); err != nil {
				return err
			}
		}
	}, nil, 0)
	ctx, cancel := context.WithCancel(ctxT(t))
	cs, err := cc.NewStream(ctx, desc, "/pkg.Svc/Chat")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		m := []byte(fmt.Sprintf("m%d", i))
		if err := cs.SendMsg(&m); err != nil {
			t.Fatal(err)
		}
		var out []byte
		if err := cs.RecvMsg(&out); err != nil || string(out) != fmt.Sprintf("M%d", i) {
			t.Fatalf("message %d: %q %v", i, out, err)
		}
	}
	cancel()
	select {
	case err := <-ended:
		if status.Code(err) != codes.Canceled {
			t.Errorf("handler's read after the client cancelled: %v, want CANCELED", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not see the client cancel")
	}

	// A half-close ends the handler's reads with io.EOF, and its status
	// follows the messages.
	cs, err = cc.NewStream(ctxT(t), desc, "/pkg.Svc/Chat")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		m := []byte(fmt.Sprintf("s%d", i))
		if err := cs.SendMsg(&m); err != nil {
			t.Fatal(err)
		}
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		var out []byte
		err := cs.RecvMsg(&out)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(out))
	}
	if strings.Join(got, ",") != "S0,S1,S2" {
		t.Errorf("answers %v", got)
	}
}

// A compressed request is left to the http.Handler adapter (where the
// gateway's pass-through compression is set up).
func TestCompressedRequestGoesToTheAdapter(t *testing.T) {
	cc := serve(t, func(_ any, ss grpc.ServerStream) error {
		return status.Error(codes.Internal, "grpcfront")
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "12")
		w.Header().Set("Grpc-Message", "adapter")
		w.WriteHeader(200)
	}), 0)
	_, _, _, err := unary(ctxT(t), cc, "/pkg.Svc/Zip", []byte("x"))
	if s := status.Convert(err); s.Code() != codes.Internal || s.Message() != "grpcfront" {
		t.Fatalf("identity call: %v, want grpcfront's INTERNAL", err)
	}
	var out []byte
	msg := []byte("x")
	err = cc.Invoke(ctxT(t), "/pkg.Svc/Zip", &msg, &out, grpc.UseCompressor(gzip.Name))
	if s := status.Convert(err); s.Code() != codes.Unimplemented || s.Message() != "adapter" {
		t.Fatalf("gzip call: %v, want the adapter's UNIMPLEMENTED", err)
	}
}

// A request message's length prefix does not make the server hold its
// size: 50 streams that each declare a 4 MiB message and send 10 bytes of
// it leave the heap as it was, within a few MiB (what arrived, in
// chunks), where buffers of the declared size would take 200 MiB. The
// stream window is 60 bytes, so the WINDOW_UPDATE for a stream's first 15
// bytes tells the client that its handler read them: its buffer is made
// and it waits for the rest.
func TestDeclaredMessageSizeIsNotHeld(t *testing.T) {
	const streams, declared = 50, 4 << 20
	release := make(chan struct{})
	addr := startH2(t, func(_ any, ss grpc.ServerStream) error {
		var in []byte
		err := ss.RecvMsg(&in)
		<-release
		return err
	}, declared, h2front.Options{StreamWindow: 60})
	defer close(release)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	fr := http2.NewFramer(nc, nc)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	_ = fr.WriteSettings()
	for i := range streams {
		id := uint32(2*i + 1)
		hb.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/pkg.S/Big"}, {":authority", "t"}, {"content-type", "application/grpc"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
		_ = fr.WriteData(id, false, append([]byte{0, declared >> 24, declared >> 16 & 0xff, declared >> 8 & 0xff, declared & 0xff}, "0123456789"...))
	}
	read := map[uint32]bool{}
	for len(read) < streams {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("%d of %d handlers read their 15 bytes: %v", len(read), streams, err)
		}
		if w, ok := f.(*http2.WindowUpdateFrame); ok && w.StreamID != 0 {
			read[w.StreamID] = true
		}
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	grown := int64(m.HeapInuse) - int64(before.HeapInuse)
	t.Logf("heap grew %d KiB for %d streams declaring %d MiB each", grown>>10, streams, declared>>20)
	if grown > 20<<20 {
		t.Fatalf("heap grew %d MiB: declared sizes held", grown>>20)
	}
}

// startH2 is serve without a gRPC client, on a server with opts: the
// server's address.
func startH2(t *testing.T, handler grpc.StreamHandler, maxMessage int, opts h2front.Options) string {
	t.Helper()
	calls := grpcfront.New(grpcfront.Options{Handler: handler, Codec: raw{}, MaxRecvMessage: maxMessage, MaxSendMessage: maxMessage})
	opts.GRPC = calls.Serve
	srv := h2front.New(http.NotFoundHandler(), opts)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return lis.Addr().String()
}

// accountingAddr is a connection address that keeps accounts as the edge
// listener's does (edge.Addr): the bytes consumed, and reservations.
type accountingAddr struct {
	net.Addr
	received, reserved atomic.Int64
}

func (a *accountingAddr) CallStarted()   {}
func (a *accountingAddr) Received(n int) { a.received.Add(int64(n)) }
func (a *accountingAddr) Reserve(_ context.Context, n int) error {
	a.reserved.Add(int64(n))
	return nil
}
func (a *accountingAddr) Adjust(d int) { a.reserved.Add(int64(d)) }

type accountedConn struct {
	net.Conn
	addr *accountingAddr
}

func (c accountedConn) RemoteAddr() net.Addr { return c.addr }

type accountedListener struct {
	net.Listener
	addr chan *accountingAddr
}

func (l accountedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	a := &accountingAddr{Addr: c.RemoteAddr()}
	l.addr <- a
	return accountedConn{c, a}, nil
}

// A request message counts as the connection's until the handler asks for
// the next one (the proxy, once it forwarded it) or the call ends, as on
// gRPC's server: requests stuck behind a slow upstream are the
// connection's for the overload manager. The handler sees the edge
// address's reservations for responses, but not its call and byte counts,
// which h2front keeps.
func TestReadMessagesAreHeldUntilTheNext(t *testing.T) {
	steps := make(chan string)
	proceed := make(chan struct{})
	var handlerAcct atomic.Bool
	calls := grpcfront.New(grpcfront.Options{Codec: raw{}, Handler: func(_ any, ss grpc.ServerStream) error {
		p, _ := peer.FromContext(ss.Context())
		_, ok := p.Addr.(interface {
			Reserve(context.Context, int) error
		})
		handlerAcct.Store(ok)
		for i := 0; ; i++ {
			var in []byte
			if err := ss.RecvMsg(&in); err != nil {
				steps <- "end"
				<-proceed
				return nil
			}
			steps <- fmt.Sprint("message ", i)
			<-proceed
		}
	}})
	srv := h2front.New(http.NotFoundHandler(), h2front.Options{GRPC: calls.Serve})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addrs := make(chan *accountingAddr, 1)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(accountedListener{lis, addrs}) }()
	t.Cleanup(func() { srv.Close(); <-done })
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(raw{})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cs, err := cc.NewStream(ctxT(t), desc, "/pkg.Svc/Up")
	if err != nil {
		t.Fatal(err)
	}
	const size = 100 << 10
	msg := make([]byte, size)
	if err := cs.SendMsg(&msg); err != nil {
		t.Fatal(err)
	}
	if s := <-steps; s != "message 0" {
		t.Fatal(s)
	}
	a := <-addrs
	// The frames' headers and the HEADERS block are consumed; the
	// message, in the handler's hands, is not.
	if got := a.received.Load(); got >= size {
		t.Fatalf("%d bytes reported consumed while the handler holds the %d-byte message", got, size)
	}
	if err := cs.SendMsg(&msg); err != nil {
		t.Fatal(err)
	}
	proceed <- struct{}{}
	if s := <-steps; s != "message 1" {
		t.Fatal(s)
	}
	if got := a.received.Load(); got < size+5 || got >= 2*size {
		t.Fatalf("%d bytes reported consumed once the handler asked for the second message, want the first's %d and not the second's", got, size+5)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	proceed <- struct{}{}
	if s := <-steps; s != "end" {
		t.Fatal(s)
	}
	proceed <- struct{}{}
	if _, err := cs.Header(); err != nil {
		t.Fatal(err)
	}
	var out []byte
	if err := cs.RecvMsg(&out); err != io.EOF {
		t.Fatalf("end of the call: %v", err)
	}
	if got := a.received.Load(); got < 2*(size+5) {
		t.Fatalf("%d bytes reported consumed after the call, want both messages' %d", got, 2*(size+5))
	}
	if !handlerAcct.Load() {
		t.Error("the handler's peer address does not take reservations")
	}
}

// Large request messages, which RecvMsg takes as the body's buffers
// without a copy where it can (h2front's TakeHeld), arrive byte for byte,
// one after another on one stream and beside small ones.
func TestLargeMessagesArriveWhole(t *testing.T) {
	cc := serve(t, func(_ any, ss grpc.ServerStream) error {
		for {
			var in []byte
			if err := ss.RecvMsg(&in); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
			sum := sha256.Sum256(in)
			out := sum[:]
			if err := ss.SendMsg(&out); err != nil {
				return err
			}
		}
	}, nil, 4<<20)
	cs, err := cc.NewStream(ctxT(t), desc, "/pkg.Svc/Sum")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, size := range []int{64 << 10, 3, 100<<10 + 3, 16<<10 - 5, 1 << 20, 0, 64<<10 - 5} {
		msg := make([]byte, size)
		for i := range msg {
			msg[i] = byte(r.Uint32())
		}
		if err := cs.SendMsg(&msg); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if err := cs.RecvMsg(&got); err != nil {
			t.Fatal(err)
		}
		if want := sha256.Sum256(msg); !bytes.Equal(got, want[:]) {
			t.Fatalf("a message of %d bytes arrived changed", size)
		}
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var out []byte
	if err := cs.RecvMsg(&out); err != io.EOF {
		t.Fatalf("end of the call: %v", err)
	}
}
