package proxy

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/envgate/envgate/gateway/internal/route"
)

// refusingConn is an upstream whose every stream has already ended when
// the proxy writes to it: SendMsg returns io.EOF (gRPC's contract when the
// stream is over) and the status, a refusal, comes from RecvMsg. That is
// what a backend that refuses streams looks like when its RST_STREAM wins
// the race with the request's first message. A fake, because the race
// cannot be forced with a real backend; a real one loses it about once in
// 300 calls (TestRetryConditionsAsEnvoy, under -race).
type refusingConn struct{ streams atomic.Int32 }

func (c *refusingConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	panic("the proxy streams")
}

func (c *refusingConn) NewStream(ctx context.Context, _ *grpc.StreamDesc, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	c.streams.Add(1)
	return refusedStream{ctx}, nil
}

type refusedStream struct{ ctx context.Context }

func (refusedStream) Header() (metadata.MD, error) { return nil, nil }
func (refusedStream) Trailer() metadata.MD         { return nil }
func (refusedStream) CloseSend() error             { return nil }
func (s refusedStream) Context() context.Context   { return s.ctx }
func (refusedStream) SendMsg(m any) error {
	if f, ok := m.(*frame); ok {
		f.free()
	}
	return io.EOF
}
func (refusedStream) RecvMsg(any) error {
	return status.Error(codes.Unavailable, "upstream refused the stream")
}

// A retried attempt whose upstream has already ended the stream when the
// request is replayed is a failed attempt with the upstream's status, not
// an io.EOF for the client: every attempt is made, and the client gets
// UNAVAILABLE. On 5d95fe2 the second attempt ended the call with
// "Unknown: EOF".
func TestRetryAfterTheUpstreamEndedTheStream(t *testing.T) {
	up := &refusingConn{}
	err := callThrough(t, up)
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "upstream refused the stream" {
		t.Fatalf("call: %v, want the upstream's UNAVAILABLE", err)
	}
	if n := up.streams.Load(); n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
}

// budgetConn is refusingConn with a retry budget of n.
type budgetConn struct {
	refusingConn
	left, outstanding atomic.Int32
}

func (c *budgetConn) AcquireRetry() (func(), bool) {
	if c.left.Add(-1) < 0 {
		return nil, false
	}
	c.outstanding.Add(1)
	return func() { c.outstanding.Add(-1) }, true
}

// A destination whose retry budget is spent (Envoy's max_retries circuit
// breaker, connectionPool.http.maxRetries) is not retried: the attempt's
// error stands; a granted retry is released once its attempt is over.
func TestRetryBudget(t *testing.T) {
	for _, tc := range []struct {
		budget, want int32
	}{{0, 1}, {1, 2}, {5, 3}} {
		up := &budgetConn{}
		up.left.Store(tc.budget)
		err := callThrough(t, up)
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("budget %d: %v", tc.budget, err)
		}
		if n := up.streams.Load(); n != tc.want {
			t.Errorf("budget %d: %d attempts, want %d", tc.budget, n, tc.want)
		}
		if n := up.outstanding.Load(); n != 0 {
			t.Errorf("budget %d: %d retries still held after the call", tc.budget, n)
		}
	}
}

// callThrough makes one call through a proxy whose route retries twice on
// unavailable, to up, and returns its error.
func callThrough(t *testing.T, up grpc.ClientConnInterface) error {
	t.Helper()
	px := routedTo(up, &route.Rule{Action: route.Action{Retries: route.Retries{Attempts: 2, RetryOn: []string{"unavailable"}}}})
	srv := grpc.NewServer(grpc.UnknownServiceHandler(px.Handler), grpc.ForceServerCodecV2(ServerCodec()))
	cc := dialServed(t, srv.Serve, srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return cc.Invoke(ctx, "/echo.EchoService/Call", &emptypb.Empty{}, &emptypb.Empty{})
}

// routedTo is a proxy that sends every call to up by rule.
func routedTo(up grpc.ClientConnInterface, rule *route.Rule) *Proxy {
	return New(func(ctx context.Context, _ string) (context.Context, grpc.ClientConnInterface, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		return metadata.NewOutgoingContext(ctx, md.Copy()), &Routed{ClientConnInterface: up, Decision: route.Decision{Rule: rule, Env: "env1"}}, nil
	}, nil, "env", nil)
}

// dialServed serves a loopback listener with serve until the test ends
// (stop ends it), and returns a client connection to it.
func dialServed(t *testing.T, serve func(net.Listener) error, stop func()) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = serve(lis) }()
	t.Cleanup(func() { stop(); <-done })
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
