package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/proto/echopb"
)

// swapSecretVolume writes cert and key into a new directory under dir and
// points dir/..data at it atomically, as the kubelet updates a Secret
// volume; dir/tls.crt and dir/tls.key are symlinks through ..data.
func swapSecretVolume(t *testing.T, dir, version, certFile, keyFile string) {
	t.Helper()
	ts := filepath.Join(dir, "..v"+version)
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{"tls.crt": certFile, "tls.key": keyFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ts, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(dir, name)); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// servedSerial makes a call on c and returns the signature of the
// certificate its connection was served with.
func servedSerial(t *testing.T, c echopb.EchoServiceClient) string {
	t.Helper()
	var p peer.Peer
	if _, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		t.Fatalf("no TLS peer certificate: %v", p.AuthInfo)
	}
	if info.State.NegotiatedProtocol != "h2" || info.State.Version < tls.VersionTLS12 {
		t.Fatalf("ALPN %q, version %x", info.State.NegotiatedProtocol, info.State.Version)
	}
	return fmt.Sprintf("%x", info.State.PeerCertificates[0].Signature)
}

func TestTLSCertificateReloadKeepsConnections(t *testing.T) {
	b := startBackend(t, "env1")
	vol := t.TempDir()
	c1, k1 := writeCert(t)
	swapSecretVolume(t, vol, "1", c1, k1)
	cfg := testConfig(t, map[string][]string{"env1": {b.addr}})
	cfg.Listeners[0].TLS = &config.TLS{CertFile: filepath.Join(vol, "tls.crt"), KeyFile: filepath.Join(vol, "tls.key"), ReloadInterval: 10 * time.Millisecond}
	gw := startGateway(t, cfg, nil)
	insecureTLS := grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}))
	dialTLS := func() echopb.EchoServiceClient {
		cc, err := grpc.NewClient(gw.Addrs()[0], insecureTLS)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		return echopb.NewEchoServiceClient(cc)
	}
	established := dialTLS()
	first := servedSerial(t, established)

	c2, k2 := writeCert(t)
	swapSecretVolume(t, vol, "2", c2, k2)
	var second string
	waitUntil(t, "new connections served the new certificate", func() bool {
		second = servedSerial(t, dialTLS())
		return second != first
	})
	// The connection made before the swap goes on, on its handshake.
	if got := servedSerial(t, established); got != first {
		t.Fatalf("established connection now reports %s, want %s", got, first)
	}

	// A broken update leaves the last good certificate in use.
	if err := os.WriteFile(filepath.Join(vol, "broken.crt"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	swapSecretVolume(t, vol, "3", filepath.Join(vol, "broken.crt"), k2)
	for range 20 { // each new connection, across many reload ticks
		if got := servedSerial(t, dialTLS()); got != second {
			t.Fatalf("after a broken update a new connection got %s, want the last good %s", got, second)
		}
	}
}

func healthCheck(t *testing.T, cc grpc.ClientConnInterface, env, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	t.Helper()
	ctx := testCtx(t)
	if env != "" {
		ctx = withEnv(ctx, env)
	}
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	return resp.GetStatus(), err
}

func TestGRPCHealthOfGatewayAndOfEnvironment(t *testing.T) {
	b := startBackend(t, "env1")
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {b.addr}}), nil)
	cc := dial(t, gw.Addrs()[0])
	waitUntil(t, "gateway SERVING", func() bool {
		st, err := healthCheck(t, cc, "", "")
		return err == nil && st == healthpb.HealthCheckResponse_SERVING
	})
	// Without env the gateway answers for itself (it has no named
	// services); with env the check reaches the environment's backend.
	if _, err := healthCheck(t, cc, "", "echo.EchoService"); status.Code(err) != codes.NotFound {
		t.Fatalf("gateway's own health for a named service: %v, want NotFound", err)
	}
	before := b.callCount()
	if st, err := healthCheck(t, cc, "env1", ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("env1's health through the gateway: %v %v", st, err)
	}
	if b.callCount() != before+1 {
		t.Fatal("a health check with env did not reach the environment's backend")
	}
	if _, err := healthCheck(t, cc, "env9", ""); status.Code(err) != codes.Unimplemented {
		t.Fatalf("health with an unknown env: %v, want UNIMPLEMENTED like any call", err)
	}
}

func TestDrainOnShutdown(t *testing.T) {
	b := startBackend(t, "env1")
	cfg := testConfig(t, map[string][]string{"env1": {b.addr}})
	cfg.DrainDelay = 2 * time.Second
	cfg.ShutdownGrace = 20 * time.Second
	gw := startGateway(t, cfg, nil)
	c := echoClient(t, gw.Addrs()[0])
	waitUntil(t, "ready", func() bool { return readyStatus(t, gw) == http.StatusOK })

	stream, err := c.BidiStream(withEnv(testCtx(t), "env1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&echopb.EchoRequest{Text: "before"}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	stopLoad := make(chan struct{})
	l := startLoad(t, c, "env1", 100, stopLoad)

	drainStart := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- gw.stop(t) }()
	waitUntil(t, "readiness 503", func() bool { return readyStatus(t, gw) == http.StatusServiceUnavailable })
	if st, err := healthCheck(t, dial(t, gw.Addrs()[0]), "", ""); err != nil || st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("gRPC health while draining: %v %v", st, err)
	}
	// During the drain delay a new connection is still served.
	if _, err := echoClient(t, gw.Addrs()[0]).Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{}); err != nil {
		t.Fatalf("new connection during the drain delay: %v", err)
	}
	// The load runs until just before the delay ends.
	time.Sleep(time.Until(drainStart.Add(cfg.DrainDelay - 300*time.Millisecond)))
	close(stopLoad)
	l.wait()
	l.check(t)

	// The stream goes on past the delay, then ends normally.
	waitUntil(t, "the gateway to stop accepting", func() bool {
		cc := dial(t, gw.Addrs()[0])
		_, err := echopb.NewEchoServiceClient(cc).Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{})
		_ = cc.Close()
		return status.Code(err) == codes.Unavailable
	})
	if time.Since(drainStart) < cfg.DrainDelay {
		t.Fatalf("stopped accepting after %v, before the drain delay", time.Since(drainStart))
	}
	if err := stream.Send(&echopb.EchoRequest{Text: "after"}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.GetEcho() != "after" {
		t.Fatalf("stream after the drain delay: %v %v", resp, err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("stream end: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

func scrape(t *testing.T, gw *runningGateway, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + gw.DebugAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d %v", path, resp.StatusCode, err)
	}
	return string(b)
}

func TestMetricsAndRouteView(t *testing.T) {
	b := startBackend(t, "env1")
	cfg := testConfig(t, map[string][]string{"env1": {b.addr}})
	// env2 discovered with no ready endpoint, as Kubernetes discovery can
	// report it (a static config refuses it at load).
	cfg.Environments = append(cfg.Environments, "env2")
	cfg.Discovery.Static["env2"] = []string{}
	gw := startGateway(t, cfg, nil)
	c := echoClient(t, gw.Addrs()[0])
	for range 2 {
		if _, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{Payload: make([]byte, 10)}); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = c.Call(withEnv(testCtx(t), "random-value-1"), &echopb.EchoRequest{})
	_, _ = c.Call(withEnv(testCtx(t), "env2"), &echopb.EchoRequest{})
	stream, err := c.BidiStream(withEnv(testCtx(t), "env1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&echopb.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}

	m := scrape(t, gw, "/metrics")
	for _, want := range []string{
		`envgate_calls_total{code="OK",env="env1",method="/echo.EchoService/Call"} 2`,
		// Unrouted values never become label values.
		`envgate_calls_total{code="Unimplemented",env="",method=""} 1`,
		`envgate_calls_total{code="Unavailable",env="env2",method="/echo.EchoService/Call"} 1`,
		`envgate_call_duration_seconds_count{code="OK",env="env1"} 2`,
		`envgate_calls_in_flight 1`,
		`envgate_endpoints{env="env1"} 1`,
		`envgate_endpoints{env="env2"} 0`,
		`envgate_environments 2`,
		`envgate_discovery_synced 1`,
		`envgate_draining 0`,
		`go_goroutines `,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(m, "random-value-1") {
		t.Error("a client's header value became a label value")
	}

	var view struct {
		Synced bool
		Rules  []struct {
			Source       string
			Match        []string
			Destinations []struct {
				Destination string
				Endpoints   []string
			}
		}
	}
	if err := json.Unmarshal([]byte(scrape(t, gw, "/routes")), &view); err != nil {
		t.Fatal(err)
	}
	if !view.Synced || len(view.Rules) != 2 || view.Rules[0].Match[0] != `header env exact "env1"` ||
		view.Rules[0].Destinations[0].Destination != "app-service.env1.svc.cluster.local:grpc" ||
		len(view.Rules[0].Destinations[0].Endpoints) != 1 || view.Rules[0].Destinations[0].Endpoints[0] != b.addr ||
		len(view.Rules[1].Destinations[0].Endpoints) != 0 {
		t.Fatalf("route view: %+v", view)
	}
}

// The load balancer's health check listener serves health only; metrics,
// routes (endpoint addresses) and explain are on the debug listener, which
// is loopback unless configured otherwise (Istio's split: 15021 health,
// 15000 admin on localhost).
func TestAdminSplit(t *testing.T) {
	b := startBackend(t, "env1")
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {b.addr}}), nil)
	for _, p := range []string{"/metrics", "/routes", "/explain?header=env:env1"} {
		resp, err := http.Get("http://" + gw.AdminAddr() + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("health listener answers %s with %d, want 404", p, resp.StatusCode)
		}
		resp, err = http.Get("http://" + gw.DebugAddr() + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("debug listener answers %s with %d", p, resp.StatusCode)
		}
	}
	var c config.Config
	c.Defaults()
	if host, _, _ := net.SplitHostPort(c.Admin.DebugAddress); !net.ParseIP(host).IsLoopback() {
		t.Fatalf("default debug address %q is not loopback", c.Admin.DebugAddress)
	}
}
