// Package echoserver implements EchoService: the seed's echo reply plus the
// knobs (payload size, delay, status, headers, trailers, streams) that a gRPC
// proxy is tested with.
package echoserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/proto/echopb"
)

// EnvHeader is the request header that names the client's environment.
const EnvHeader = "env"

// Server answers EchoService calls.
type Server struct {
	echopb.UnimplementedEchoServiceServer
	// Env is the environment the server runs in (the seed's ENV variable).
	Env string
	// Addr identifies this server in responses that ask for details.
	Addr string
	Log  *slog.Logger
}

// Register adds the echo service to srv.
func Register(srv grpc.ServiceRegistrar, s *Server) { echopb.RegisterEchoServiceServer(srv, s) }

func (s *Server) logger() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Call is the seed's method.
func (s *Server) Call(ctx context.Context, req *echopb.EchoRequest) (*echopb.EchoResponse, error) {
	clientEnv := strings.Join(metadata.ValueFromIncomingContext(ctx, EnvHeader), ",")
	s.logger().Info("client request env:" + clientEnv)
	if err := s.prepare(ctx, req, grpc.SetHeader, grpc.SendHeader, grpc.SetTrailer); err != nil {
		return nil, err
	}
	return s.response(ctx, req, clientEnv, 0), nil
}

// ServerStream sends req.Count responses.
func (s *Server) ServerStream(req *echopb.EchoRequest, stream grpc.ServerStreamingServer[echopb.EchoResponse]) error {
	ctx := stream.Context()
	clientEnv := strings.Join(metadata.ValueFromIncomingContext(ctx, EnvHeader), ",")
	if err := s.prepareStream(stream, req); err != nil {
		return err
	}
	n := max(int(req.GetCount()), 1)
	for i := range n {
		if err := stream.Send(s.response(ctx, req, clientEnv, i)); err != nil {
			return err
		}
	}
	return nil
}

// ClientStream counts what arrives and answers once the client half-closes.
// The first request's knobs apply.
func (s *Server) ClientStream(stream grpc.ClientStreamingServer[echopb.EchoRequest, echopb.EchoResponse]) error {
	ctx := stream.Context()
	clientEnv := strings.Join(metadata.ValueFromIncomingContext(ctx, EnvHeader), ",")
	var first *echopb.EchoRequest
	var msgs, size int64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if first == nil {
			first = req
		}
		msgs++
		size += int64(len(req.GetPayload()))
	}
	if first == nil {
		first = &echopb.EchoRequest{}
	}
	if err := s.prepareStream(stream, first); err != nil {
		return err
	}
	resp := s.response(ctx, first, clientEnv, 0)
	resp.ReceivedMessages, resp.ReceivedBytes = msgs, size
	return stream.SendAndClose(resp)
}

// BidiStream answers every request in turn.
func (s *Server) BidiStream(stream grpc.BidiStreamingServer[echopb.EchoRequest, echopb.EchoResponse]) error {
	ctx := stream.Context()
	clientEnv := strings.Join(metadata.ValueFromIncomingContext(ctx, EnvHeader), ",")
	for i := 0; ; i++ {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if i == 0 {
			if err := s.prepareStream(stream, req); err != nil {
				return err
			}
		} else {
			if err := sleep(ctx, req.GetSleepMs()); err != nil {
				return err
			}
			if c := req.GetStatusCode(); c != 0 {
				return status.Error(codes.Code(c), req.GetStatusMessage())
			}
		}
		if err := stream.Send(s.response(ctx, req, clientEnv, i)); err != nil {
			return err
		}
	}
}

func (s *Server) prepareStream(stream grpc.ServerStream, req *echopb.EchoRequest) error {
	return s.prepare(stream.Context(), req,
		func(_ context.Context, md metadata.MD) error { return stream.SetHeader(md) },
		func(_ context.Context, md metadata.MD) error { return stream.SendHeader(md) },
		func(_ context.Context, md metadata.MD) error { stream.SetTrailer(md); return nil })
}

// prepare applies the request's headers, trailers, delay and status.
func (s *Server) prepare(ctx context.Context, req *echopb.EchoRequest,
	setHeader, sendHeader, setTrailer func(context.Context, metadata.MD) error,
) error {
	if len(req.GetResponseHeaders()) > 0 {
		if err := setHeader(ctx, toMD(req.GetResponseHeaders())); err != nil {
			return err
		}
	}
	if len(req.GetResponseTrailers()) > 0 {
		if err := setTrailer(ctx, toMD(req.GetResponseTrailers())); err != nil {
			return err
		}
	}
	if req.GetSendHeadersFirst() {
		if err := sendHeader(ctx, nil); err != nil {
			return err
		}
	}
	if err := sleep(ctx, req.GetSleepMs()); err != nil {
		return err
	}
	if c := req.GetStatusCode(); c != 0 {
		return status.Error(codes.Code(c), req.GetStatusMessage())
	}
	return nil
}

func sleep(ctx context.Context, ms int64) error {
	if ms <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

func (s *Server) response(ctx context.Context, req *echopb.EchoRequest, clientEnv string, index int) *echopb.EchoResponse {
	resp := &echopb.EchoResponse{
		Message: fmt.Sprintf("Hello World! ServerEnv:%s, ClientEnv:%s", s.Env, clientEnv),
		Echo:    req.GetText(),
		Index:   int32(index),
	}
	if n := req.GetResponseSize(); n > 0 {
		resp.Payload = make([]byte, n)
	}
	if req.GetIncludeDetails() {
		resp.Server = s.Addr
		md, _ := metadata.FromIncomingContext(ctx)
		resp.RequestMetadata = make(map[string][]byte, len(md))
		for k, v := range md {
			resp.RequestMetadata[k] = []byte(strings.Join(v, ","))
		}
	}
	return resp
}

func toMD(m map[string][]byte) metadata.MD {
	md := make(metadata.MD, len(m))
	for k, v := range m {
		md.Append(k, string(v))
	}
	return md
}
