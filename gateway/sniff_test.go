package main

import (
	"bytes"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/envgate/envgate/proto/echopb"
)

// The SETTINGS the sniffer sends before either server speaks are exactly
// what each server then sends (which is why the sniffer drops those: the
// client sees one SETTINGS frame, as from any server), so a client's first
// requests keep within the limits of either; the client gets one
// acknowledgement of its SETTINGS, not two (curl's nghttp2 treats an
// unexpected one as a protocol error), and one connection window.
func TestInterimSettingsAgree(t *testing.T) {
	b := startBackend(t, "env1")
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {b.addr}}), nil)
	for _, tc := range []struct {
		name   string
		fields []hpack.HeaderField
		grpc   bool
	}{
		{"gRPC server", []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/echo.EchoService/Call"},
			{Name: ":authority", Value: "gw"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"}}, true},
		{"HTTP server", []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/"},
			{Name: ":authority", Value: "gw"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", gw.Addrs()[0])
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
			fr := http2.NewFramer(nc, nc)
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			for _, f := range tc.fields {
				_ = enc.WriteField(f)
			}
			if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
				t.Fatal(err)
			}
			if err := fr.WriteSettings(); err != nil {
				t.Fatal(err)
			}
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
				t.Fatal(err)
			}
			var settings []map[http2.SettingID]uint32
			var windows []uint32 // connection WINDOW_UPDATE increments
			acks := 0
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("after %d SETTINGS and %d acknowledgements: %v", len(settings), acks, err)
				}
				if sf, ok := f.(*http2.SettingsFrame); ok {
					if sf.IsAck() {
						acks++
						continue
					}
					m := map[http2.SettingID]uint32{}
					_ = sf.ForeachSetting(func(s http2.Setting) error { m[s.ID] = s.Val; return nil })
					settings = append(settings, m)
					_ = fr.WriteSettingsAck()
				}
				if wf, ok := f.(*http2.WindowUpdateFrame); ok && wf.StreamID == 0 {
					windows = append(windows, wf.Increment)
				}
				if hf, ok := f.(*http2.HeadersFrame); ok && hf.StreamID == 1 {
					break
				}
			}
			if len(windows) != 1 || windows[0] != clientConnWindow-65535 {
				t.Fatalf("connection WINDOW_UPDATEs %v, want one of %d: the server granted a window the sniffer did not", windows, clientConnWindow-65535)
			}
			// The server's own, equal to the sniffer's, were dropped;
			// had they differed they would be here.
			if len(settings) != 1 || acks != 1 {
				t.Fatalf("%d SETTINGS frames and %d acknowledgements before the answer, want 1 and 1: the server's SETTINGS differ from the sniffer's %v", len(settings), acks, settings)
			}
		})
	}
}

// defaultSetting is a setting's initial value (RFC 9113 section 6.5.2).
func defaultSetting(id http2.SettingID) uint32 {
	switch id {
	case http2.SettingHeaderTableSize:
		return 4096
	case http2.SettingInitialWindowSize:
		return 65535
	case http2.SettingMaxFrameSize:
		return 16384
	}
	return 1<<32 - 1 // unlimited
}

// A gRPC channel's connection opened ahead of its first call (a load
// balancer's spare connections; make bench's connection rows) is served by
// gRPC's server however long it waits, as one that calls at once is. It
// used to go to the HTTP server after a second without a request, which
// serves gRPC through grpc.Server.ServeHTTP at 2-3x the CPU per call
// (docs/bench.md, "Run E"). grpc.Server.ServeHTTP declares the trailers
// it will send in a Trailer header and gRPC's own server does not: that
// header says which one served.
func TestIdleGRPCConnectionStaysOnGRPCServer(t *testing.T) {
	b := startBackend(t, "env1")
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {b.addr}}), nil)
	cc, err := grpc.NewClient(gw.Addrs()[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx := testCtx(t)
	cc.Connect()
	for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			t.Fatal("the connection did not become ready")
		}
	}
	// The stimulus: the connection idles past the second the sniffer
	// used to wait, then makes its first call.
	time.Sleep(1500 * time.Millisecond)
	var md metadata.MD
	_, err = echopb.NewEchoServiceClient(cc).Call(metadata.AppendToOutgoingContext(ctx, "env", "env1"), &echopb.EchoRequest{}, grpc.Header(&md))
	if err != nil {
		t.Fatal(err)
	}
	if tr := md.Get("trailer"); len(tr) > 0 {
		t.Fatalf("the answer declares its trailers %q, as grpc.Server.ServeHTTP does on Go's HTTP/2 server: gRPC's own server did not serve the call", tr)
	}
}
