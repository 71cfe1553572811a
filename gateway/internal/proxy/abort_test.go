package proxy

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/envgate/envgate/gateway/internal/grpcfront"
	"github.com/envgate/envgate/gateway/internal/h2front"
	"github.com/envgate/envgate/gateway/internal/route"
)

// slowAbortConn is an upstream whose streams end when aborted (as
// h2client's do), and whose first Abort then holds the aborting goroutine
// until release is closed: the pump that aborted has not yet recorded why
// when the attempt sees its stream end. A fake, because with a real
// upstream that window is a few instructions wide (TestMessageOverLimitIsRefused
// lost it about once in 200 runs under -race, CI at e1f6a10).
type slowAbortConn struct {
	once    sync.Once
	aborted chan struct{}
	release chan struct{}
}

func (c *slowAbortConn) StreamsAbort() {}

func (c *slowAbortConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	panic("the proxy streams")
}

func (c *slowAbortConn) NewStream(ctx context.Context, _ *grpc.StreamDesc, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	return &slowAbortStream{c: c, ctx: ctx}, nil
}

type slowAbortStream struct {
	c   *slowAbortConn
	ctx context.Context
}

func (s *slowAbortStream) Abort() {
	first := false
	s.c.once.Do(func() { first = true; close(s.c.aborted) })
	if first {
		<-s.c.release
	}
}
func (*slowAbortStream) Header() (metadata.MD, error) { return nil, nil }
func (*slowAbortStream) Trailer() metadata.MD         { return nil }
func (*slowAbortStream) CloseSend() error             { return nil }
func (s *slowAbortStream) Context() context.Context   { return s.ctx }
func (*slowAbortStream) SendMsg(m any) error {
	if f, ok := m.(*frame); ok {
		f.free()
	}
	return nil
}
func (s *slowAbortStream) RecvMsg(any) error {
	<-s.c.aborted
	return status.Error(codes.Canceled, "context canceled")
}

// A request message over the limit fails the call with the client side's
// RESOURCE_EXHAUSTED, not with the CANCELED of the upstream stream the
// failure aborted, however the pump that aborted and the attempt that saw
// the stream end are scheduled. At e1f6a10 the attempt took the abort's
// status when it ran before the pump had recorded its error.
func TestClientFailureNotTheAbortIsTheCallsError(t *testing.T) {
	up := &slowAbortConn{aborted: make(chan struct{}), release: make(chan struct{})}
	defer close(up.release)
	px := routedTo(up, &route.Rule{})
	// The gateway's own front: grpc-go's server writes a failed receive's
	// status itself, before the handler returns, and would hide the defect.
	calls := grpcfront.New(grpcfront.Options{Handler: px.Handler, Codec: ServerCodec(), MaxRecvMessage: 1024, MaxSendMessage: 1024})
	srv := h2front.New(http.NotFoundHandler(), h2front.Options{GRPC: calls.Serve})
	cc := dialServed(t, srv.Serve, srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A stream not half-closed: its pump runs beside the attempt, as for
	// any request not all in when the call starts.
	cs, err := cc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, "/echo.EchoService/ClientStream")
	if err != nil {
		t.Fatal(err)
	}
	_ = cs.SendMsg(wrapperspb.Bytes(make([]byte, 4096)))
	err = cs.RecvMsg(&emptypb.Empty{})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "larger than max") {
		t.Fatalf("call: %v, want the client side's RESOURCE_EXHAUSTED", err)
	}
}
