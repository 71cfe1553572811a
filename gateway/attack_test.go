package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/envgate/envgate/proto/echopb"
)

// Attacks on the gateway as an internet edge, run against the real binary
// so its memory is its own: peak RSS comes from /proc/PID/status (VmHWM).

// gatewayProcess runs the gateway binary with the static environments in
// envs and extra YAML appended to the configuration.
func gatewayProcess(t *testing.T, envs map[string]string, extra string) (p *process, h2c string) {
	t.Helper()
	return gatewayProcessEnv(t, nil, envs, extra)
}

// gatewayProcessEnv is gatewayProcess with env added to its environment.
func gatewayProcessEnv(t *testing.T, env []string, envs map[string]string, extra string) (p *process, h2c string) {
	t.Helper()
	var b strings.Builder
	listener := "{address: 127.0.0.1:0}"
	if s := testSharedHTTP2(); s != nil { // as unvalidatedConfig
		listener = fmt.Sprintf("{address: 127.0.0.1:0, sharedHTTP2: %t}", *s)
	}
	fmt.Fprintf(&b, "listeners: [%s]\nadmin: {address: 127.0.0.1:0, debugAddress: 127.0.0.1:0}\ndrainDelay: 10ms\ndiscovery:\n  static:\n", listener)
	for env, addr := range envs {
		fmt.Fprintf(&b, "    %s: [%s]\n", env, addr)
	}
	b.WriteString(extra)
	cfgFile := filepath.Join(t.TempDir(), "envgate.yaml")
	if err := os.WriteFile(cfgFile, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p = startProcess(t, env, builtBinary(t, "gateway"), "-config", cfgFile)
	h2c = p.waitLine(t, `"msg":"listening","address":"([^"]+)","tls":false`)[1]
	return p, h2c
}

// peakRSSMiB is the process's peak resident memory so far.
func peakRSSMiB(t *testing.T, p *process) float64 {
	return float64(procStatus(t, p.cmd.Process.Pid, "VmHWM")) / 1024
}

// control makes one ordinary call and fails the test unless env answers.
func control(t *testing.T, addr, env string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := echoClient(t, addr).Call(metadata.AppendToOutgoingContext(ctx, "env", env), &echopb.EchoRequest{})
	if err != nil {
		t.Fatalf("control call: %v", err)
	}
	if !strings.Contains(resp.GetMessage(), "ServerEnv:"+env) {
		t.Fatalf("control call answered %q", resp.GetMessage())
	}
}

// sendAmplified sends streams header blocks of request's fields followed by
// 6000 one-byte references to a 4000-byte dynamic-table entry each: 10 KiB
// on the wire, 24 MB decoded. request's fields are never indexed, so the
// entry stays in the table from stream to stream.
func sendAmplified(c *rawConn, streams int, request func(*hpack.Encoder)) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	amp := hpack.HeaderField{Name: "x-amp", Value: strings.Repeat("a", 4000)}
	for i := range streams {
		buf.Reset()
		request(enc)
		for range 6000 {
			_ = enc.WriteField(amp)
		}
		if !c.sendHeaders(uint32(1+2*i), buf.Bytes(), true) {
			return
		}
	}
}

// A request header list is bounded (60 KiB, Envoy's max_request_headers_kb)
// whatever its shape: one huge value, or a few KiB of HPACK that reference
// one dynamic-table entry thousands of times. Before the bound, one 16 MB
// env value took the gateway to 266 MB and 27 KiB of HPACK cost 500 MB.
func TestRequestHeadersAreBounded(t *testing.T) {
	b := startBackend(t, "env1")
	p, addr := gatewayProcess(t, map[string]string{"env1": b.addr}, "")
	control(t, addr, "env1")

	t.Run("one 16 MB value", func(t *testing.T) {
		for range 3 {
			c := dialRaw(t, addr)
			c.sendHeaders(1, headerBlock(strings.Repeat("e", 16<<20)), true)
			if !c.waitUntil(10*time.Second, func() bool { _, reset := c.resets[1]; return reset }) {
				t.Fatal("a 16 MB header list was neither refused nor reset")
			}
		}
	})
	// 20 streams of 24 MB decoded each (sendAmplified); each is refused,
	// the list never decoded past the limit: reset (gRPC's server, as
	// Envoy's HTTP/2 codec), answered 431 (envgate's HTTP/2 server, as
	// net/http's), or the connection closed.
	amplified := func(t *testing.T, fields func(*hpack.Encoder)) {
		const streams = 20
		c := dialRaw(t, addr)
		sendAmplified(c, streams, fields)
		refused := func() int { // under c.mu (waitUntil calls it so)
			n := 0
			for i := range streams {
				id := uint32(1 + 2*i)
				if _, reset := c.resets[id]; reset || c.httpStatus[id] == "431" {
					n++
				}
			}
			return n
		}
		if !c.waitUntil(20*time.Second, func() bool { return refused() == streams }) {
			c.mu.Lock()
			n := refused()
			c.mu.Unlock()
			t.Fatalf("%d of %d amplified header blocks answered 431 or reset, and the connection still open", n, streams)
		}
	}
	t.Run("HPACK amplification", func(t *testing.T) {
		amplified(t, func(enc *hpack.Encoder) { requestFields(enc, "env1") })
	})
	t.Run("HPACK amplification on a REST connection", func(t *testing.T) {
		// The same on a connection whose first request is REST, served
		// by envgate's HTTP/2 server.
		amplified(t, func(enc *hpack.Encoder) {
			for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "gw"}, {"env", "env1"}} {
				_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1], Sensitive: true})
			}
		})
	})
	control(t, addr, "env1")
	if peak := peakRSSMiB(t, p); peak > 64 {
		t.Fatalf("peak RSS %.0f MiB after header attacks, want under 64", peak)
	} else {
		t.Logf("peak RSS %.1f MiB", peak)
	}
	if out := p.output(); strings.Contains(out, strings.Repeat("e", 1000)) {
		t.Fatal("the oversized value reached the log")
	}
}

// A client over the limit hears why from its own gRPC library, which reads
// the limit from the gateway's SETTINGS; an env value too long to route is
// refused with a message that does not repeat it whole.
func TestLongHeaderValuesAreRefusedBriefly(t *testing.T) {
	b := startBackend(t, "env1")
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {b.addr}}), nil)
	c := echoClient(t, gw.Addrs()[0])
	control(t, gw.Addrs()[0], "env1")
	_, err := c.Call(metadata.AppendToOutgoingContext(testCtx(t), "env", "env1", "x-big", strings.Repeat("b", 70<<10)), &echopb.EchoRequest{})
	if err == nil || !strings.Contains(err.Error(), "header list size") {
		t.Fatalf("70 KiB of headers: %v, want the header list size limit named", err)
	}
	_, err = c.Call(metadata.AppendToOutgoingContext(testCtx(t), "env", strings.Repeat("z", 50<<10)), &echopb.EchoRequest{})
	if status.Code(err) != codes.Unimplemented || len(status.Convert(err).Message()) > 200 {
		t.Fatalf("50 KiB env value: %v (message %d bytes), want UNIMPLEMENTED with a short message", status.Code(err), len(status.Convert(err).Message()))
	}
}

// The same Rapid Reset rule holds on a connection whose first request is
// REST, served by envgate's own HTTP/2 server (h2front reports each
// stream's end to the edge listener); on net/http's server, which served
// such connections before, the connection stayed open after 2000 resets.
func TestRapidResetClosesARESTConnection(t *testing.T) {
	b := startBackend(t, "env1")
	p, addr := gatewayProcess(t, map[string]string{"env1": b.addr}, "")
	c := dialRaw(t, addr)
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/api/v1/items"}, {":authority", "gw"}, {"env", "env1"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := buf.Bytes()
	// Streams past the 100 whose handlers still run are refused, and a
	// refused stream is not one the client reset: how many of the first
	// 2000 count depends on the machine's speed, so the attacker keeps
	// going until the connection is closed (at most 20,000).
	sent := c.openAndReset(block, 20000)
	if !c.closedWithin(10 * time.Second) {
		t.Fatalf("REST connection still open after %d streams reset at once", sent)
	}
	summary := p.waitLine(t, `"msg":"connection closed".*"streams_reset_early":(\d+),"closed_for_resets":true`)
	t.Logf("closed after %d resets sent; summary: %s resets", sent, summary[1])
	// The resets are in that summary, not a request line each.
	if n := strings.Count(p.output(), `"status":499`); n > 0 {
		t.Fatalf("%d request lines logged for streams reset early", n)
	}
}

// Rapid Reset (CVE-2023-44487): a client that opens streams and resets them
// at once has its connection closed once its early resets pass Envoy's
// limit, the resets write no access-log line each (one summary per
// connection instead), and ordinary calls go on being served meanwhile.
// Before, no connection was ever closed and ordinary traffic fell to 5
// calls a second.
func TestRapidResetClosesTheConnection(t *testing.T) {
	b := startBackend(t, "env1")
	p, addr := gatewayProcess(t, map[string]string{"env1": b.addr}, "")
	control(t, addr, "env1")

	// One connection: it is closed before 2000 reset streams are through.
	c := dialRaw(t, addr)
	block := headerBlock("env1")
	sent := c.openAndReset(block, 2000)
	if !c.closedWithin(10 * time.Second) {
		t.Fatalf("connection still open after %d streams reset at once", sent)
	}
	summary := p.waitLine(t, `"msg":"connection closed".*"streams_reset_early":(\d+),"closed_for_resets":true`)
	t.Logf("closed after %d resets sent; summary: %s resets", sent, summary[1])

	// An attacker reconnecting for 2 s while an ordinary client calls. Both
	// run on this machine's two cores beside the gateway, so the attacker
	// takes CPU from the gateway as well; ordinary calls must still be
	// served (before: 5 a second).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				return
			}
			_, _ = nc.Write([]byte(http2.ClientPreface))
			fr := http2.NewFramer(nc, nc)
			_ = fr.WriteSettings()
			wg.Go(func() { _, _ = io.Copy(io.Discard, nc) }) // ends when nc is closed
			for id := uint32(1); ctx.Err() == nil; id += 2 {
				_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
				if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}) != nil ||
					fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
					break
				}
			}
			nc.Close()
		}
	})
	client := echoClient(t, addr)
	ok, failed := 0, 0
	for ctx.Err() == nil {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.Call(metadata.AppendToOutgoingContext(cctx, "env", "env1"), &echopb.EchoRequest{})
		ccancel()
		if err != nil {
			failed++
		} else {
			ok++
		}
	}
	wg.Wait()
	t.Logf("ordinary calls during the attack: %d ok, %d failed; backend saw %d calls; gateway CPU %v", ok, failed, b.callCount(), procCPU(t, p.cmd.Process.Pid))
	if failed > 0 || ok < 100 {
		t.Fatalf("ordinary calls during the attack: %d ok, %d failed; want at least 100 and none failed", ok, failed)
	}
	if n := strings.Count(p.output(), `"msg":"call"`); n > ok+100 {
		t.Fatalf("%d access-log lines for %d ordinary calls: reset streams are logged one by one", n, ok)
	}
	if peak := peakRSSMiB(t, p); peak > 96 {
		t.Fatalf("peak RSS %.0f MiB under the reset flood", peak)
	}
}

// Connections are capped, and an h2c client over the cap is told why; an
// idle connection is closed after the idle timeout with GOAWAY.
func TestConnectionCapAndIdleTimeout(t *testing.T) {
	b := startBackend(t, "env1")
	_, addr := gatewayProcess(t, map[string]string{"env1": b.addr}, "limits: {maxConnections: 3, idleTimeout: 500ms}\n")
	var conns []*rawConn
	for range 3 {
		conns = append(conns, dialRaw(t, addr))
	}
	over := dialRaw(t, addr)
	if !over.closedWithin(5 * time.Second) {
		t.Fatal("a connection over the cap was not closed")
	}
	code, debug, ok := over.lastGoAway()
	if !ok || code != http2.ErrCodeEnhanceYourCalm || !strings.Contains(debug, "connection limit") {
		t.Fatalf("refusal: GOAWAY %v %v %q, want GOAWAY ENHANCE_YOUR_CALM naming the connection limit", ok, code, debug)
	}
	// The idle ones are closed with GOAWAY, which frees room for a new one.
	for _, c := range conns {
		if !c.closedWithin(10 * time.Second) {
			t.Fatal("idle connection not closed after the idle timeout")
		}
		if _, _, ok := c.lastGoAway(); !ok {
			t.Fatal("idle connection closed without GOAWAY")
		}
	}
	control(t, addr, "env1")
}

// levelOneGzip is a legacy gRPC compressor for gzip at level 1, so the
// bytes a client sends differ from what gzip's default level would make:
// a gateway that inflates and compresses again cannot hand them on
// unchanged.
type levelOneGzip struct{}

func (levelOneGzip) Do(w io.Writer, p []byte) error {
	z, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	if _, err := z.Write(p); err != nil {
		return err
	}
	return z.Close()
}
func (levelOneGzip) Type() string { return "gzip" }

// recordingGunzip is a backend's legacy decompressor that keeps the bytes
// as they arrived before inflating them.
type recordingGunzip struct {
	mu  sync.Mutex
	got [][]byte
}

func (r *recordingGunzip) Do(in io.Reader) ([]byte, error) {
	raw, err := io.ReadAll(in)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.got = append(r.got, raw)
	r.mu.Unlock()
	z, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(z)
}
func (r *recordingGunzip) Type() string { return "gzip" }

// Compressed messages pass through compressed, as Envoy forwards them: the
// backend receives the very bytes the client sent, and a 16 KB message that
// inflates to 16 MB costs the gateway no 16 MB (before: 33 ms of CPU and
// 16+ MB per call, inflated and compressed again).
func TestCompressedMessagesPassThrough(t *testing.T) {
	rec := &recordingGunzip{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.RPCDecompressor(rec), grpc.MaxRecvMsgSize(64<<20),
		grpc.ForceServerCodecV2(rawCodec{name: "proto"}),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			var b []byte
			if err := ss.RecvMsg(&b); err != nil {
				return err
			}
			out := []byte(fmt.Sprint(len(b)))
			return ss.SendMsg(&out)
		}))
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	p, addr := gatewayProcess(t, map[string]string{"env1": lis.Addr().String()}, "")

	cc := dial(t, addr, grpc.WithCompressor(levelOneGzip{}))
	in := make([]byte, 16<<20-64) // zeros: about 16 KB once compressed
	var want bytes.Buffer
	if err := (levelOneGzip{}).Do(&want, in); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			var out []byte
			err := cc.Invoke(metadata.AppendToOutgoingContext(testCtx(t), "env", "env1"), "/bomb.S/Inflate", &in, &out, grpc.ForceCodecV2(rawCodec{name: "proto"}))
			if err != nil || string(out) != fmt.Sprint(len(in)) {
				t.Errorf("call: %v, backend read %q bytes", err, out)
			}
		})
	}
	wg.Wait()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.got) != 10 {
		t.Fatalf("backend got %d compressed messages, want 10", len(rec.got))
	}
	for _, got := range rec.got {
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("backend received %d compressed bytes that are not the client's %d", len(got), want.Len())
		}
	}
	if peak := peakRSSMiB(t, p); peak > 48 {
		t.Fatalf("peak RSS %.0f MiB for 10 messages of 16 KB compressed", peak)
	} else {
		t.Logf("peak RSS %.1f MiB; compressed message %d bytes", peak, want.Len())
	}
}

// grpcMessage is a gRPC length-prefixed message declaring size bytes with
// body (which may be shorter: the rest never comes).
func grpcMessage(size int, body []byte) []byte {
	b := make([]byte, 5, 5+len(body))
	binary.BigEndian.PutUint32(b[1:], uint32(size))
	return append(b, body...)
}

// waitControl makes ordinary calls until one succeeds, for up to d; the
// gateway may refuse calls (RESOURCE_EXHAUSTED) while it recovers from an
// overload.
func waitControl(t *testing.T, addr, env string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := echoClient(t, addr).Call(metadata.AppendToOutgoingContext(ctx, "env", env), &echopb.EchoRequest{})
		cancel()
		if err == nil {
			return
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("control call: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // a retry's pacing, not synchronisation
	}
}

// waitOutput waits up to d for the process to print substr.
func (p *process) waitOutput(t *testing.T, substr string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.output(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the gateway's output within %v", substr, d)
		}
		time.Sleep(20 * time.Millisecond) // polling the output, not synchronisation
	}
}

// outputWithin reports whether substr is in the gateway's output within d.
func outputWithin(p *process, substr string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !strings.Contains(p.output(), substr) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond) // polling the output, not synchronisation
	}
	return true
}

// neverReadingClients opens conns connections that each ask for streams
// 1 MiB responses and never read (an HTTP/2 window of 0), and returns
// them open.
func neverReadingClients(t *testing.T, addr string, conns, streams int) []*rawConn {
	t.Helper()
	req, err := proto.Marshal(&echopb.EchoRequest{ResponseSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var cs []*rawConn
	for range conns {
		c := dialRaw(t, addr)
		c.write(func(fr *http2.Framer) error {
			return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		})
		for i := range streams {
			id := uint32(1 + 2*i)
			if !c.sendHeaders(id, headerBlock("env1"), false) ||
				!c.write(func(fr *http2.Framer) error { return fr.WriteData(id, true, grpcMessage(len(req), req)) }) {
				break
			}
		}
		cs = append(cs, c)
	}
	return cs
}

// The overload tests run the gateway with GOMEMLIMIT=200MiB, which is 90%
// of the container limit it stands for: 222 MiB.
const containerLimitMiB = 222

// waitShedUnder222MiB waits until the overload manager has shed a
// connection, failing if the gateway's memory passes the container limit
// first.
func waitShedUnder222MiB(t *testing.T, p *process) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(p.output(), "closed the client connection holding the most memory") {
		checkPeakUnder222MiB(t, p)
		if time.Now().After(deadline) {
			t.Fatal("no connection was shed within 30 s")
		}
		time.Sleep(20 * time.Millisecond) // polling memory, not synchronisation
	}
}

// checkPeakUnder222MiB fails the test once the gateway's peak RSS passed
// the container limit, logging the overload manager's lines.
func checkPeakUnder222MiB(t *testing.T, p *process) {
	t.Helper()
	peak := peakRSSMiB(t, p)
	if peak <= containerLimitMiB {
		return
	}
	for _, l := range strings.Split(p.output(), "\n") {
		if strings.Contains(l, "overload") {
			t.Log(l)
		}
	}
	t.Fatalf("peak RSS %.0f MiB, over the %d MiB container limit GOMEMLIMIT=200MiB stands for", peak, containerLimitMiB)
}

// Clients that ask for large responses and never read them (an HTTP/2
// window of 0) cannot take the gateway past its memory limit. A response
// message is let in from the upstream only while the client's connection
// holds under 4 MiB (edge.OutboundCap), so each stuck call holds at most
// its upstream stream's window (256 KiB); as memory still nears
// GOMEMLIMIT, the overload manager refuses new calls with
// RESOURCE_EXHAUSTED and closes the connections that hold the most, and
// ordinary calls are served throughout or again at once. Before, each
// response stayed queued whole after the call was logged OK: 600 such
// calls would hold 600 MiB.
//
// The never-reading connections (100 calls each) come one at a time
// until the gateway refuses new calls: how many it takes depends on what
// a stuck call holds besides its window. Six at once were enough while
// each call had three goroutines; with one, six stayed under the refusal
// mark and seven at once overshot the limit on gRPC's server (234 MiB).
func TestClientsThatNeverReadAreShed(t *testing.T) {
	b := startBackend(t, "env1")
	p, addr := gatewayProcessEnv(t, []string{"GOMEMLIMIT=200MiB"}, map[string]string{"env1": b.addr}, "")
	control(t, addr, "env1")
	conns := 0
	for ; !outputWithin(p, "overloaded: refusing new calls", 2*time.Second); conns++ {
		if conns == 12 {
			t.Fatalf("%d never-reading connections of 100 calls, and no call refused", conns)
		}
		neverReadingClients(t, addr, 1, 100)
		checkPeakUnder222MiB(t, p)
	}
	t.Logf("calls refused after %d never-reading connections", conns)
	waitShedUnder222MiB(t, p)
	waitControl(t, addr, "env1", 20*time.Second)
	checkPeakUnder222MiB(t, p)
	t.Logf("peak RSS %.1f MiB", peakRSSMiB(t, p))
}

// stuckUpstream is an HTTP/2 server that completes the handshake and then
// reads nothing: the gateway can send it no more than the initial 64 KiB
// windows.
func stuckUpstream(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	done := make(chan struct{})
	t.Cleanup(func() {
		lis.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err == nil {
				_ = http2.NewFramer(c, nil).WriteSettings()
			}
		}
	}()
	return lis.Addr().String()
}

// Requests sent to an upstream that does not read are held whole by the
// gateway (one message per stream: gRPC's server hands over whole
// messages), and those count against the client's connection: as memory
// nears GOMEMLIMIT the overload manager refuses new calls and closes the
// connections holding the most, and calls to a healthy environment are
// served again. Before, 120 such 2 MiB requests held 240 MiB.
func TestRequestsToAStuckUpstreamAreShed(t *testing.T) {
	good := startBackend(t, "env2")
	p, addr := gatewayProcessEnv(t, []string{"GOMEMLIMIT=200MiB"},
		map[string]string{"env1": stuckUpstream(t), "env2": good.addr}, "")
	control(t, addr, "env2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	payload := make([]byte, 2<<20)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after the clients' connections close (cleanups run last first)
	for range 6 {
		c := echoClient(t, addr) // a connection of its own
		for range 20 {
			wg.Go(func() {
				cs, err := c.ClientStream(metadata.AppendToOutgoingContext(ctx, "env", "env1"))
				if err != nil {
					return
				}
				if cs.Send(&echopb.EchoRequest{Payload: payload}) == nil {
					_, _ = cs.CloseAndRecv()
				}
			})
		}
	}
	waitShedUnder222MiB(t, p)
	waitControl(t, addr, "env2", 20*time.Second)
	cancel()
	checkPeakUnder222MiB(t, p)
	t.Logf("peak RSS %.1f MiB", peakRSSMiB(t, p))
}
