package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/internal/testca"
)

// The official interop cases, run by grpc-go's own interop client and server
// (built by the Makefile at the grpc version in go.mod) with the client
// talking to the gateway and the server behind it as environment "interop".
var interopCases = []string{
	"empty_unary", "large_unary", "client_streaming", "server_streaming",
	"ping_pong", "empty_stream", "cancel_after_begin", "cancel_after_first_response",
	"timeout_on_sleeping_server", "status_code_and_message", "special_status_message",
	"custom_metadata", "unimplemented_method", "unimplemented_service",
}

// Both client-side listeners (h2c and TLS), with the backend reached over
// h2c and over TLS (Issue 12: the upstream SIMPLE mode, the backend's
// certificate from a private CA verified by name).
func TestInteropThroughGateway(t *testing.T) {
	ca := testca.New(t, "interop CA")
	backendCert := ca.Issue(t, testca.Leaf{DNS: []string{"interop.internal"}})
	dir := t.TempDir()
	for _, upstream := range []struct {
		name string
		args []string
		tls  config.UpstreamTLS
	}{
		{"h2c upstream", nil, config.UpstreamTLS{}},
		{"tls upstream", []string{"-use_tls", "-tls_cert_file", writeFile(t, dir, "backend.pem", backendCert.CertPEM), "-tls_key_file", writeFile(t, dir, "backend-key.pem", backendCert.KeyPEM)},
			config.UpstreamTLS{Mode: config.TLSSimple, CACertificates: writeFile(t, dir, "ca.pem", ca.PEM), SNI: "interop.internal"}},
	} {
		t.Run(upstream.name, func(t *testing.T) {
			server := startProcess(t, []string{"GRPC_GO_LOG_SEVERITY_LEVEL=info"}, tool(t, "interop-server"), append([]string{"-port", "0"}, upstream.args...)...)
			port := server.waitLine(t, `interop server listening on .*:(\d+)`)[1]

			cert, key := writeCert(t)
			cfg := testConfig(t, map[string][]string{"interop": {"127.0.0.1:" + port}})
			cfg.Listeners = append(cfg.Listeners, cfg.Listeners[0])
			cfg.Listeners[1].TLS = &config.TLS{CertFile: cert, KeyFile: key}
			cfg.Upstream.TLS = upstream.tls
			cfg.Defaults()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			gw := startGateway(t, cfg, nil)
			runInteropCases(t, gw, cert)
		})
	}
}

// With sharedHTTP2 off, a connection whose first call is gRPC is served
// by gRPC's own server instead of envgate's HTTP/2 server and grpcfront:
// the same cases must pass there, over h2c and TLS.
func TestInteropThroughGRPCServer(t *testing.T) {
	server := startProcess(t, []string{"GRPC_GO_LOG_SEVERITY_LEVEL=info"}, tool(t, "interop-server"), "-port", "0")
	port := server.waitLine(t, `interop server listening on .*:(\d+)`)[1]
	cert, key := writeCert(t)
	cfg := testConfig(t, map[string][]string{"interop": {"127.0.0.1:" + port}})
	cfg.Listeners[0].SharedHTTP2 = new(false)
	cfg.Listeners = append(cfg.Listeners, cfg.Listeners[0])
	cfg.Listeners[1].TLS = &config.TLS{CertFile: cert, KeyFile: key}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	runInteropCases(t, startGateway(t, cfg, nil), cert)
}

// cancelRaced is how cancel_after_begin fails when the client lost its own
// race: grpc-go's DoCancelAfterBegin (interop/test_utils.go) cancels the
// call's context and then calls CloseAndRecv at once, and when the
// goroutine that acts on the cancellation is scheduled after that, the
// half-close goes out, the server answers OK and the answer is read
// before the cancellation is noticed. The faster the path, the more often
// (about one run in six through envgate); no proxy can make the client
// see CANCELLED then. Any other failure of the case fails the test.
var cancelRaced = []byte("got error code 0, want 1")

// runInteropCases runs every interop case through both of gw's listeners.
func runInteropCases(t *testing.T, gw *runningGateway, cert string) {
	client := tool(t, "interop-client")
	for _, listener := range []struct {
		name  string
		addr  string
		extra []string
	}{
		{"h2c", gw.Addrs()[0], nil},
		{"tls", gw.Addrs()[1], []string{"-use_tls", "-use_test_ca", "-ca_file", cert, "-server_host_override", "localhost"}},
	} {
		_, port, _ := net.SplitHostPort(listener.addr)
		for _, tc := range interopCases {
			t.Run(listener.name+"/"+tc, func(t *testing.T) {
				t.Parallel()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				args := append([]string{
					"-server_host", "127.0.0.1", "-server_port", port,
					"-test_case", tc, "-additional_metadata", "env:interop",
				}, listener.extra...)
				out, err := exec.CommandContext(ctx, client, args...).CombinedOutput()
				for try := 1; err != nil && tc == "cancel_after_begin" && try < 3 && bytes.Contains(out, cancelRaced); try++ {
					t.Logf("cancel_after_begin over %s: the client's own race (try %d), again:\n%s", listener.name, try, out)
					out, err = exec.CommandContext(ctx, client, args...).CombinedOutput()
				}
				if err != nil {
					t.Fatalf("%s over %s: %v\n%s", tc, listener.name, err, out)
				}
			})
		}
	}
}

// grpc-go's interop client and server do not implement the four compression
// cases of the interop spec (doc/interop-test-descriptions.md), so they are
// written here from the spec: a client and a TestService that checks each
// message's compression flag as the spec's servers do, the gateway between.
func TestInteropCompressionCasesThroughGateway(t *testing.T) {
	srvStats := &payloadCompression{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StatsHandler(srvStats))
	testgrpc.RegisterTestServiceServer(srv, &compressionTestServer{seen: srvStats})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	gw := startGateway(t, testConfig(t, map[string][]string{"interop": {lis.Addr().String()}}), nil)
	cliStats := &payloadCompression{}
	tc := testgrpc.NewTestServiceClient(dial(t, gw.Addrs()[0], grpc.WithStatsHandler(cliStats)))
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "env", "interop")
	payload := func(n int) *testpb.Payload { return &testpb.Payload{Body: make([]byte, n)} }

	t.Run("client_compressed_unary", func(t *testing.T) {
		// The probe: an uncompressed request that claims to be compressed
		// must be refused by the server, so the check is real.
		_, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{ExpectCompressed: &testpb.BoolValue{Value: true}, ResponseSize: 314159, Payload: payload(271828)})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("probe: got %v, want InvalidArgument", err)
		}
		resp, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{ExpectCompressed: &testpb.BoolValue{Value: true}, ResponseSize: 314159, Payload: payload(271828)}, grpc.UseCompressor(gzip.Name))
		if err != nil || len(resp.GetPayload().GetBody()) != 314159 {
			t.Fatalf("compressed: %v", err)
		}
		resp, err = tc.UnaryCall(ctx, &testpb.SimpleRequest{ExpectCompressed: &testpb.BoolValue{Value: false}, ResponseSize: 314159, Payload: payload(271828)})
		if err != nil || len(resp.GetPayload().GetBody()) != 314159 {
			t.Fatalf("uncompressed: %v", err)
		}
	})
	t.Run("server_compressed_unary", func(t *testing.T) {
		for _, want := range []bool{true, false} {
			cliStats.reset()
			resp, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{ResponseCompressed: &testpb.BoolValue{Value: want}, ResponseSize: 314159, Payload: payload(271828)})
			if err != nil || len(resp.GetPayload().GetBody()) != 314159 {
				t.Fatalf("response_compressed=%v: %v", want, err)
			}
			if got := cliStats.flags(); len(got) != 1 || got[0] != want {
				t.Fatalf("response_compressed=%v: client received compression flags %v", want, got)
			}
		}
	})
	t.Run("client_compressed_streaming", func(t *testing.T) {
		probe, err := tc.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := probe.Send(&testpb.StreamingInputCallRequest{ExpectCompressed: &testpb.BoolValue{Value: true}, Payload: payload(27182)}); err != nil {
			t.Fatal(err)
		}
		if _, err := probe.CloseAndRecv(); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("probe: got %v, want InvalidArgument", err)
		}
		// grpc-go compresses every message of a stream or none, so both
		// messages go compressed; the spec's second message only expects
		// nothing.
		s, err := tc.StreamingInputCall(ctx, grpc.UseCompressor(gzip.Name))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []*testpb.StreamingInputCallRequest{
			{ExpectCompressed: &testpb.BoolValue{Value: true}, Payload: payload(27182)},
			{ExpectCompressed: &testpb.BoolValue{Value: false}, Payload: payload(45904)},
		} {
			if err := s.Send(r); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := s.CloseAndRecv()
		if err != nil || resp.GetAggregatedPayloadSize() != 73086 {
			t.Fatalf("got %d, %v; want 73086", resp.GetAggregatedPayloadSize(), err)
		}
	})
	t.Run("server_compressed_streaming", func(t *testing.T) {
		// The server compresses the stream when the first response asks for
		// it (grpc-go sets compression per stream, not per message).
		cliStats.reset()
		s, err := tc.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{
			{Compressed: &testpb.BoolValue{Value: true}, Size: 31415},
			{Compressed: &testpb.BoolValue{Value: true}, Size: 92653},
		}})
		if err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for {
			resp, err := s.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, len(resp.GetPayload().GetBody()))
		}
		if fmt.Sprint(sizes) != "[31415 92653]" {
			t.Fatalf("sizes %v", sizes)
		}
		if got := cliStats.flags(); fmt.Sprint(got) != "[true true]" {
			t.Fatalf("client received compression flags %v, want both compressed", got)
		}
	})
}

// payloadCompression records, per incoming message, whether it arrived
// compressed, and hands the server the flags of its own call.
type payloadCompression struct {
	mu    sync.Mutex
	calls map[*[]bool]bool
	last  []bool
}

type flagsKey struct{}

func (p *payloadCompression) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, flagsKey{}, new([]bool))
}

func (p *payloadCompression) HandleRPC(ctx context.Context, s stats.RPCStats) {
	in, ok := s.(*stats.InPayload)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	f := ctx.Value(flagsKey{}).(*[]bool)
	*f = append(*f, in.CompressedLength != in.Length)
	p.last = append(p.last, in.CompressedLength != in.Length)
}

func (p *payloadCompression) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (p *payloadCompression) HandleConn(context.Context, stats.ConnStats) {}

func (p *payloadCompression) reset() {
	p.mu.Lock()
	p.last = nil
	p.mu.Unlock()
}

func (p *payloadCompression) flags() []bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]bool(nil), p.last...)
}

// compressed reports whether the i-th message of the call in ctx arrived
// compressed.
func (p *payloadCompression) compressed(ctx context.Context, i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := ctx.Value(flagsKey{}).(*[]bool)
	return i < len(*f) && (*f)[i]
}

// compressionTestServer implements the parts of TestService the compression
// cases use, with the spec's checks.
type compressionTestServer struct {
	testgrpc.UnimplementedTestServiceServer
	seen *payloadCompression
}

func (s *compressionTestServer) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if in.GetExpectCompressed().GetValue() && !s.seen.compressed(ctx, 0) {
		return nil, status.Error(codes.InvalidArgument, "expected a compressed request")
	}
	if in.GetResponseCompressed().GetValue() {
		if err := grpc.SetSendCompressor(ctx, gzip.Name); err != nil {
			return nil, err
		}
	}
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, in.GetResponseSize())}}, nil
}

func (s *compressionTestServer) StreamingInputCall(stream testgrpc.TestService_StreamingInputCallServer) error {
	var total int32
	for i := 0; ; i++ {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: total})
		}
		if err != nil {
			return err
		}
		if in.GetExpectCompressed().GetValue() && !s.seen.compressed(stream.Context(), i) {
			return status.Errorf(codes.InvalidArgument, "expected message %d compressed", i)
		}
		total += int32(len(in.GetPayload().GetBody()))
	}
}

func (s *compressionTestServer) StreamingOutputCall(in *testpb.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	params := in.GetResponseParameters()
	if len(params) > 0 && params[0].GetCompressed().GetValue() {
		if err := grpc.SetSendCompressor(stream.Context(), gzip.Name); err != nil {
			return err
		}
	}
	for _, p := range params {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	return nil
}
