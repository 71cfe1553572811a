package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/envgate/envgate/gateway/internal/config"
)

// curl runs the system's curl (the Debian package) with a bound on time,
// returning what it printed and its exit error.
func curl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is not installed (make test installs it): %v", err)
	}
	out, err := exec.CommandContext(ctx, path, append([]string{"-sS", "--max-time", "100"}, args...)...).CombinedOutput()
	return string(out), err
}

// startHello runs the seed's helloserver (the built binary) for env and
// returns its address.
func startHello(t testing.TB, env string) string {
	t.Helper()
	p := startProcess(t, []string{"ENV=" + env}, builtBinary(t, "helloserver"), "-addr", "127.0.0.1:0")
	return p.waitLine(t, `addr=(\S+)`)[1]
}

// HTTP/1.1, h2c with prior knowledge, and TLS with ALPN h2 and http/1.1,
// to the seed's helloserver in env1 and env2 through one gateway port (two
// listeners: plaintext and TLS), by real curl; an unknown environment gets
// Envoy's 404 with envgate's reason.
func TestCurlThroughGateway(t *testing.T) {
	hello := map[string][]string{"env1": {startHello(t, "env1")}, "env2": {startHello(t, "env2")}}
	cfg := testConfig(t, hello)
	certFile, keyFile := writeCert(t)
	cfg.Listeners = append(cfg.Listeners, config.Listener{Address: "127.0.0.1:0", TLS: &config.TLS{CertFile: certFile, KeyFile: keyFile, ReloadInterval: time.Hour}})
	gw := startGateway(t, cfg, nil)
	plain, tlsAddr := gw.Addrs()[0], gw.Addrs()[1]
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)

	for _, tc := range []struct {
		name    string
		url     string
		args    []string
		version string // curl's %{http_version}
	}{
		{"HTTP/1.1", "http://" + plain + "/", nil, "1.1"},
		{"h2c prior knowledge", "http://" + plain + "/", []string{"--http2-prior-knowledge"}, "2"},
		{"TLS ALPN h2", "https://localhost:" + tlsPort + "/", []string{"--http2", "--cacert", certFile}, "2"},
		{"TLS ALPN http/1.1", "https://localhost:" + tlsPort + "/", []string{"--http1.1", "--cacert", certFile}, "1.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, env := range []string{"env1", "env2"} {
				args := append(append([]string{}, tc.args...), "-H", "env: "+env, "-w", "\n%{http_code} %{http_version}", tc.url)
				out, err := curl(t, args...)
				if err != nil {
					t.Fatalf("curl %v: %v\n%s", args, err, out)
				}
				want := fmt.Sprintf("Hello World! ServerEnv:%s, ClientEnv:%s\n\n200 %s", env, env, tc.version)
				if out != want {
					t.Fatalf("curl %s: got %q, want %q", env, out, want)
				}
			}
			args := append(append([]string{}, tc.args...), "-H", "env: env9", "-w", "\n%{http_code}", tc.url)
			out, err := curl(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			if want := "envgate: no route for env=\"env9\"\n\n404"; out != want {
				t.Fatalf("unknown env: got %q, want %q", out, want)
			}
		})
	}
}

// gRPC (grpcurl) and REST (curl, HTTP/1.1 and h2c) through the same
// gateway port to one backend that serves both, as a Go service often
// does; a plaintext h2c connection that starts with REST carries gRPC
// after it (Go's HTTP/2 server, then gRPC's ServeHTTP), and curl's
// HTTP/0.9 complaint of before is gone.
func TestGRPCAndRESTOnOnePort(t *testing.T) {
	be := startBackend(t, "env1")
	mixed := startMixedBackend(t, "env1", be)
	cfg := testConfig(t, map[string][]string{"env1": {mixed}})
	gw := startGateway(t, cfg, nil)
	addr := gw.Addrs()[0]

	out, err := grpcurl(t, "-plaintext", "-proto", "proto/echo.proto", "-H", "env: env1", "-d", `{"text":"hi"}`, addr, "echo.EchoService/Call")
	if err != nil || !strings.Contains(out, "ServerEnv:env1") {
		t.Fatalf("grpcurl: %v\n%s", err, out)
	}
	for _, proto := range [][]string{{"--http1.1"}, {"--http2-prior-knowledge"}} {
		out, err := curl(t, append(proto, "-H", "env: env1", "http://"+addr+"/api/v1/hello")...)
		if err != nil || out != "REST env1 /api/v1/hello" {
			t.Fatalf("curl %v: %v %q", proto, err, out)
		}
	}

	// One HTTP/2 connection: REST first, then a gRPC call on it.
	c := &http.Client{Transport: h2cTransport()}
	for range 2 {
		resp, err := c.Get("http://" + addr + "/x")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Fatalf("no env: %d, want 404", resp.StatusCode)
		}
	}
	resp, body := grpcOverHTTP(t, c, addr, "env1")
	if resp.Trailer.Get("Grpc-Status") != "0" || !strings.Contains(string(body), "env1") {
		t.Fatalf("gRPC after REST on one connection: status %q message %q, body %q", resp.Trailer.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message"), body)
	}
}

// REST after gRPC on one HTTP/2 connection, as a load balancer that
// mixes them sends it: by default every HTTP/2 connection is envgate's own
// server's and the REST request is routed; with sharedHTTP2 off the
// connection is gRPC's server's from its first call, which answers REST
// with 415.
func TestRESTAfterGRPCOnOneConnection(t *testing.T) {
	be := startBackend(t, "env1")
	mixed := startMixedBackend(t, "env1", be)
	for _, tc := range []struct {
		name   string
		shared *bool
		status int
	}{
		{"default", nil, http.StatusOK},
		{"sharedHTTP2 false", new(false), http.StatusUnsupportedMediaType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, map[string][]string{"env1": {mixed}})
			cfg.Listeners[0].SharedHTTP2 = tc.shared
			addr := startGateway(t, cfg, nil).Addrs()[0]
			c := &http.Client{Transport: h2cTransport()}
			resp, _ := grpcOverHTTP(t, c, addr, "env1")
			if resp.Trailer.Get("Grpc-Status") != "0" {
				t.Fatalf("gRPC first: status %q", resp.Trailer.Get("Grpc-Status"))
			}
			var reused bool
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/api/v1/hello", nil)
			req.Header.Set("env", "env1")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if !reused {
				t.Fatal("the REST request went on a new connection")
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("REST after gRPC: %d %q, want %d", resp.StatusCode, body, tc.status)
			}
			if tc.status == http.StatusOK && string(body) != "REST env1 /api/v1/hello" {
				t.Fatalf("REST after gRPC answered %q", body)
			}
		})
	}
}

// grpcOverHTTP makes an echo Call ("hi") for env as an HTTP/2 POST with
// c, returning the answer with its trailers read and its body.
func grpcOverHTTP(t *testing.T, c *http.Client, addr, env string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/echo.EchoService/Call", strings.NewReader("\x00\x00\x00\x00\x04\x0a\x02hi"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	req.Header.Set("env", env)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp, body
}

func h2cTransport() *http.Transport {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{Protocols: p}
}

// startMixedBackend serves REST and, for gRPC requests, be's gRPC server,
// on one h2c-capable port.
func startMixedBackend(t testing.TB, env string, be *backend) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			be.srv.ServeHTTP(w, r)
			return
		}
		fmt.Fprintf(w, "REST %s %s", env, r.URL.Path)
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return lis.Addr().String()
}

// streamServer answers PUT with the SHA-256 of what it read, and GET
// /download/N with N deterministic bytes (chunked), holding neither.
func streamServer(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut || r.Method == http.MethodPost {
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
			return
		}
		n, _ := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/download/"), 10, 64)
		_, _ = io.Copy(w, io.LimitReader(newDeterministic(), n))
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return lis.Addr().String()
}

func newDeterministic() io.Reader { return rand.NewChaCha8([32]byte{1}) }

// A 50 MiB upload (Expect: 100-continue, and chunked) and a 50 MiB
// download through the gateway binary with real curl arrive whole, and the
// gateway's peak RSS stays far below the body: bodies stream.
func TestLargeBodiesStreamWithBoundedRSS(t *testing.T) {
	const size = 50 << 20
	be := streamServer(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "upload")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(newDeterministic(), size)); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	want := fmt.Sprintf("%d %s", size, hex.EncodeToString(h.Sum(nil)))

	cfgFile := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`listeners: [{address: "127.0.0.1:0"}]
admin: {address: "127.0.0.1:0", debugAddress: "-"}
routing: {header: env, service: app-service}
discovery: {static: {env1: [%q]}}
drainDelay: 1ms
`, be)), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := startProcess(t, nil, builtBinary(t, "gateway"), "-config", cfgFile)
	addr := gw.waitLine(t, `"msg":"listening","address":"([^"]+)"`)[1]

	for _, args := range [][]string{
		{"-T", src}, // PUT with Content-Length, Expect: 100-continue
		{"-T", src, "-H", "Transfer-Encoding: chunked"},         // chunked
		{"--http2-prior-knowledge", "--data-binary", "@" + src}, // h2c POST
	} {
		out, err := curl(t, append(args, "-H", "env: env1", "http://"+addr+"/upload")...)
		if err != nil || out != want {
			t.Fatalf("upload %v: %v: got %q, want %q", args, err, out, want)
		}
	}
	for _, proto := range []string{"--http1.1", "--http2-prior-knowledge"} {
		dst := filepath.Join(dir, "download")
		out, err := curl(t, proto, "-H", "env: env1", "-o", dst, "-w", "%{http_code}", fmt.Sprintf("http://%s/download/%d", addr, size))
		if err != nil || out != "200" {
			t.Fatalf("download %s: %v %q", proto, err, out)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if s := sha256.Sum256(got); len(got) != size || hex.EncodeToString(s[:]) != strings.Fields(want)[1] {
			t.Fatalf("download %s: %d bytes, not the %d sent", proto, len(got), size)
		}
	}
	peak := peakRSS(t, gw.cmd.Process.Pid)
	t.Logf("gateway peak RSS after 3 x 50 MiB up and 2 x 50 MiB down: %d MiB", peak>>20)
	if peak > 40<<20 {
		t.Fatalf("gateway peak RSS %d MiB: a 50 MiB body was held, not streamed", peak>>20)
	}
}

// peakRSS is a process's peak resident set size (VmHWM).
func peakRSS(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no VmHWM in /proc/%d/status", pid)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// A WebSocket (RFC 6455, golang.org/x/net/websocket on both ends) upgrades
// through the gateway over HTTP/1.1 and echoes both ways.
func TestWebSocketThroughGateway(t *testing.T) {
	var conns atomic.Int32
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: websocket.Handler(func(ws *websocket.Conn) {
		conns.Add(1)
		_, _ = io.Copy(ws, ws)
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {lis.Addr().String()}}), nil)

	wc, err := websocket.NewConfig("ws://"+gw.Addrs()[0]+"/ws", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	wc.Header.Set("env", "env1")
	ws, err := websocket.DialConfig(wc)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.SetDeadline(time.Now().Add(10 * time.Second))
	for i := range 3 {
		msg := fmt.Sprintf("message %d", i)
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatal(err)
		}
		if got != msg {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
	// 4 MiB more through the upgraded connection: relayed as it is read,
	// none of it held (the overload manager must not pick the connection
	// for what went through it).
	big, got := bytes.Repeat([]byte("w"), 256<<10), make([]byte, 256<<10)
	for range 16 {
		if _, err := ws.Write(big); err != nil {
			t.Fatal(err)
		}
		// The echo comes back in the frames the server's copy made.
		if _, err := io.ReadFull(ws, got); err != nil || !bytes.Equal(got, big) {
			t.Fatalf("echo of %d bytes: %v", len(big), err)
		}
	}
	if held, peer, ok := gw.conns.CloseLargest(1 << 20); ok {
		t.Fatalf("the WebSocket connection from %s counts as holding %d KiB after relaying 4 MiB", peer, held>>10)
	}
	if conns.Load() != 1 {
		t.Fatalf("backend saw %d WebSocket connections, want 1", conns.Load())
	}
}

// The seed's loadgen against the gateway, two environments, 20 s at a
// fixed rate: no errors, each environment's count as sent, the achieved
// rate within 5% of the asked one.
func TestLoadgenThroughGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s of load")
	}
	hello := map[string][]string{"env1": {startHello(t, "env1")}, "env2": {startHello(t, "env2")}}
	gw := startGateway(t, testConfig(t, hello), nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const rps, secs = 100, 20
	cmd := exec.CommandContext(ctx, builtBinary(t, "loadgen"), "-duration", fmt.Sprintf("%ds", secs), "-envs", "env1,env2")
	cmd.Env = append(os.Environ(), "SERVER_ADDR=http://"+gw.Addrs()[0], fmt.Sprintf("REQUESTS_PER_SECOND=%d", rps))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("loadgen: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	// Requests the loadgen sent late (a busy machine: make test runs
	// packages side by side) still count; a dropped one fails below.
	rows := regexp.MustCompile(`(?m)^(env\d)[ \t]+(\d+)[ \t]+(\d+)[ \t]+(\d+)[ \t]+(\d+)[ \t]+\S+[ \t]+\S+[ \t]+\S+[ \t]+([\d.]+)[ \t]*(.*)$`).FindAllStringSubmatch(string(out), -1)
	if len(rows) != 2 {
		t.Fatalf("want a summary row for env1 and env2:\n%s", out)
	}
	total, rate := 0, 0.0 // requests and rate over both
	for _, r := range rows {
		n, _ := strconv.Atoi(r[2])
		ok, _ := strconv.Atoi(r[3])
		if dropped, _ := strconv.Atoi(r[5]); dropped > 0 {
			t.Fatalf("%s: %d requests dropped: loadgen could not send at the asked rate", r[1], dropped)
		}
		envRate, _ := strconv.ParseFloat(r[6], 64)
		if n != ok || strings.TrimSpace(r[7]) != "" {
			t.Fatalf("%s: %d requests, %d ok, errors %q", r[1], n, ok, r[7])
		}
		// The environments take turns: each gets half, give or take one.
		if n < rps*secs/2-2 || n > rps*secs/2+2 {
			t.Fatalf("%s: %d requests, want about %d", r[1], n, rps*secs/2)
		}
		total += n
		rate += envRate
	}
	if total < rps*secs-4 || rate < 0.95*rps || rate > 1.05*rps {
		t.Fatalf("%d requests at %.1f requests/s, asked %d/s for %d s", total, rate, rps, secs)
	}
}

// TestLongLivedHTTPConnectionsHoldNothing (and TestWebSocketThroughGateway
// for an upgraded connection): what an HTTP connection carried
// and the gateway relayed is not memory it holds, so the overload manager,
// which closes the connection holding the most, does not pick a
// long-lived HTTP/1.1 or HTTP/2 connection (a load balancer's, carrying
// many clients) for the bytes that went through it. Before, every byte an
// HTTP connection ever sent counted as held: after 16 MiB of uploads each
// of these two was a 16 MiB holder, first in line to be closed.
func TestLongLivedHTTPConnectionsHoldNothing(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", n)
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Close() })
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {lis.Addr().String()}}), nil)
	addr := gw.Addrs()[0]
	body := make([]byte, 1<<20)
	const uploads = 16

	// HTTP/2 (h2c, REST): envgate's HTTP/2 front.
	c := &http.Client{Transport: h2cTransport()}
	for range uploads {
		req, _ := http.NewRequest("PUT", "http://"+addr+"/upload", bytes.NewReader(body))
		req.Header.Set("env", "env1")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 || string(got) != fmt.Sprint(len(body)) {
			t.Fatalf("h2c upload: %d HTTP/%d %q", resp.StatusCode, resp.ProtoMajor, got)
		}
	}
	// HTTP/1.1 keep-alive: the fast path.
	nc, br := dialHTTP1(t, addr)
	for range uploads {
		if _, err := fmt.Fprintf(nc, "PUT /upload HTTP/1.1\r\nHost: gw\r\nenv: env1\r\nContent-Length: %d\r\n\r\n", len(body)); err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Write(body); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := readBody(t, resp); resp.StatusCode != 200 || got != fmt.Sprint(len(body)) {
			t.Fatalf("HTTP/1.1 upload: %d %q", resp.StatusCode, got)
		}
	}
	// Both connections are open and idle: neither holds 1 MiB.
	if held, peer, ok := gw.conns.CloseLargest(1 << 20); ok {
		t.Fatalf("the connection from %s counts as holding %d KiB after relaying %d MiB", peer, held>>10, uploads)
	}
}
