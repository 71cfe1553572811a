package main

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"

	"github.com/envgate/envgate/proto/echopb"
)

// rawCodec carries messages as plain bytes, for payloads that are not
// protobuf at all.
type rawCodec struct{ name string }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (c rawCodec) Name() string { return c.name }

// startRawBackend serves every method with handler, over raw bytes.
func startRawBackend(t *testing.T, handler func(grpc.ServerStream) error) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.ForceServerCodecV2(rawCodec{name: "raw"}),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error { return handler(ss) }),
	)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

type subtyper interface{ ContentSubtype() string }

func TestNonProtobufPayloadPassesUnchanged(t *testing.T) {
	backend := startRawBackend(t, func(ss grpc.ServerStream) error {
		var b []byte
		if err := ss.RecvMsg(&b); err != nil {
			return err
		}
		sub := ""
		if ts, ok := grpc.ServerTransportStreamFromContext(ss.Context()).(subtyper); ok {
			sub = ts.ContentSubtype()
		}
		_ = ss.SetHeader(metadata.Pairs("x-content-subtype", sub))
		out := append([]byte("echo:"), b...)
		return ss.SendMsg(&out)
	})
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {backend}}), nil)
	cc := dial(t, gw.Addrs()[0])
	// Invalid protobuf (a truncated varint, then arbitrary bytes), sent as
	// application/grpc+json.
	in := []byte{0xff, 0xff, 0xff, '{', '"', 'a', '"', '}', 0x00}
	var out []byte
	var hdr metadata.MD
	err := cc.Invoke(withEnv(testCtx(t), "env1"), "/anything.NotProto/Do", &in, &out,
		grpc.ForceCodecV2(rawCodec{name: "json"}), grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	if want := append([]byte("echo:"), in...); !bytes.Equal(out, want) {
		t.Fatalf("got %q, want %q", out, want)
	}
	if got := hdr.Get("x-content-subtype"); len(got) != 1 || got[0] != "json" {
		t.Fatalf("backend saw content subtype %q, want json", got)
	}
}

// compressionSeen records the grpc-encoding of incoming headers.
type compressionSeen struct {
	mu   sync.Mutex
	encs []string
}

func (c *compressionSeen) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}
func (c *compressionSeen) HandleRPC(_ context.Context, s stats.RPCStats) {
	if h, ok := s.(*stats.InHeader); ok {
		c.mu.Lock()
		c.encs = append(c.encs, h.Compression)
		c.mu.Unlock()
	}
}
func (c *compressionSeen) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (c *compressionSeen) HandleConn(context.Context, stats.ConnStats) {}
func (c *compressionSeen) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.encs) == 0 {
		return "<none>"
	}
	return c.encs[len(c.encs)-1]
}

func TestCompressionSurvives(t *testing.T) {
	backendSaw := &compressionSeen{}
	b := startBackend(t, "env1", grpc.StatsHandler(backendSaw))
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {b.addr}}), nil)
	clientSaw := &compressionSeen{}
	c := echoClient(t, gw.Addrs()[0], grpc.WithStatsHandler(clientSaw))

	// A compressed request reaches the backend compressed, and its
	// compressed response (gRPC answers in the request's encoding) reaches
	// the client compressed.
	resp, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{Text: "zip", ResponseSize: 10_000}, grpc.UseCompressor(gzip.Name))
	if err != nil || resp.GetEcho() != "zip" || len(resp.GetPayload()) != 10_000 {
		t.Fatalf("compressed call: %v", err)
	}
	if got := backendSaw.last(); got != gzip.Name {
		t.Errorf("backend received grpc-encoding %q, want gzip", got)
	}
	if got := clientSaw.last(); got != gzip.Name {
		t.Errorf("client received grpc-encoding %q, want gzip", got)
	}

	// An uncompressed request stays uncompressed both ways.
	if _, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := backendSaw.last(); got != "" {
		t.Errorf("backend received grpc-encoding %q for a plain request", got)
	}
	if got := clientSaw.last(); got != "" {
		t.Errorf("client received grpc-encoding %q for a plain request", got)
	}
}
