package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/envgate/envgate/echo/echoserver"
	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/internal/h2spectest"
	"github.com/envgate/envgate/proto/echopb"
)

// backend is a real echo server on 127.0.0.1:0 that records, per call, what
// its handler saw of the context, so tests can tell that deadlines and
// cancellation reached it.
type backend struct {
	addr string
	env  string
	srv  *grpc.Server

	mu    sync.Mutex
	calls []backendCall
	done  chan backendCall // every finished call, for tests that wait on one
}

type backendCall struct {
	method      string
	hasDeadline bool
	deadline    time.Duration // remaining when the call arrived
	ctxErr      error         // the context's error when the handler returned
}

func startBackend(t testing.TB, env string, opts ...grpc.ServerOption) *backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: lis.Addr().String(), env: env, done: make(chan backendCall, 1000)}
	record := func(ctx context.Context, method string, handler func() error) error {
		c := backendCall{method: method}
		if dl, ok := ctx.Deadline(); ok {
			c.hasDeadline, c.deadline = true, time.Until(dl)
		}
		err := handler()
		c.ctxErr = ctx.Err()
		b.mu.Lock()
		b.calls = append(b.calls, c)
		b.mu.Unlock()
		select {
		case b.done <- c:
		default:
		}
		return err
	}
	opts = append(opts,
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
			_ = record(ctx, info.FullMethod, func() error { resp, err = h(ctx, req); return err })
			return resp, err
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return record(ss.Context(), info.FullMethod, func() error { return h(srv, ss) })
		}),
	)
	srv := grpc.NewServer(opts...)
	b.srv = srv
	echoserver.Register(srv, &echoserver.Server{Env: env, Addr: b.addr})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	reflection.Register(srv)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return b
}

// stop ends the server as a pod's SIGTERM would: calls in flight finish,
// new connections are refused.
func (b *backend) stop() { b.srv.GracefulStop() }

func (b *backend) callCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.calls)
}

// waitCall returns the next call the backend finishes.
func (b *backend) waitCall(t testing.TB) backendCall {
	t.Helper()
	select {
	case c := <-b.done:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("backend saw no call finish within 10s")
		return backendCall{}
	}
}

// testConfig routes each named environment to its backends' addresses, on
// one h2c listener on 127.0.0.1:0.
func testConfig(t testing.TB, envs map[string][]string) *config.Config {
	t.Helper()
	c := unvalidatedConfig(envs)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// testSharedHTTP2 is the listeners' sharedHTTP2 for this run of the
// tests: nil (the default, on) unless ENVGATE_TEST_SHARED_HTTP2 says.
func testSharedHTTP2() *bool {
	v, err := strconv.ParseBool(os.Getenv("ENVGATE_TEST_SHARED_HTTP2"))
	if err != nil {
		return nil
	}
	return &v
}

// unvalidatedConfig is testConfig before Validate, for a test that adds
// what Validate needs first (VirtualService files for services other than
// routing.service).
func unvalidatedConfig(envs map[string][]string) *config.Config {
	off := false
	c := &config.Config{
		Listeners: []config.Listener{{Address: "127.0.0.1:0"}},
		Admin:     config.Admin{Address: "127.0.0.1:0", DebugAddress: "127.0.0.1:0"},
		Discovery: config.Discovery{Static: envs},
		AccessLog: &off,
	}
	// ENVGATE_TEST_SHARED_HTTP2=false runs the tests with the listener's
	// sharedHTTP2 off: a connection whose first request is gRPC goes to
	// gRPC's own server instead of envgate's HTTP/2 server and grpcfront.
	c.Listeners[0].SharedHTTP2 = testSharedHTTP2()
	c.Defaults()
	c.DrainDelay = time.Millisecond // tests that drain set their own
	return c
}

type runningGateway struct {
	*gateway
	cancel context.CancelFunc
	done   chan error
}

// startGateway runs a gateway until the test ends.
func startGateway(t testing.TB, cfg *config.Config, logOut io.Writer, dial ...func(context.Context, string) (net.Conn, error)) *runningGateway {
	t.Helper()
	if logOut == nil {
		logOut = io.Discard
	}
	return startGatewayLogging(t, cfg, slog.New(slog.NewJSONHandler(logOut, nil)), dial...)
}

// startGatewayLogging is startGateway with its logger, as run builds it.
func startGatewayLogging(t testing.TB, cfg *config.Config, log *slog.Logger, dial ...func(context.Context, string) (net.Conn, error)) *runningGateway {
	t.Helper()
	var d func(context.Context, string) (net.Conn, error)
	if len(dial) > 0 {
		d = dial[0]
	}
	g, err := newGateway(cfg, log, d)
	if err != nil {
		t.Fatal(err)
	}
	return runGateway(t, g)
}

// runGateway runs a built gateway until the test ends.
func runGateway(t testing.TB, g *gateway) *runningGateway {
	t.Helper()
	cfg := g.cfg
	ctx, cancel := context.WithCancel(context.Background())
	rg := &runningGateway{gateway: g, cancel: cancel, done: make(chan error, 1)}
	go func() { rg.done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-rg.done:
		case <-time.After(cfg.ShutdownGrace + 10*time.Second):
			// Where it is stuck is the diagnosis.
			var buf bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			t.Errorf("gateway did not stop; goroutines:\n%s", buf.String())
		}
	})
	return rg
}

// stop ends the gateway and returns Run's result.
func (g *runningGateway) stop(t *testing.T) error {
	t.Helper()
	g.cancel()
	select {
	case err := <-g.done:
		g.done <- err // for Cleanup
		return err
	case <-time.After(g.cfg.ShutdownGrace + 10*time.Second):
		t.Fatal("gateway did not stop")
		return nil
	}
}

func dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func echoClient(t testing.TB, addr string, opts ...grpc.DialOption) echopb.EchoServiceClient {
	return echopb.NewEchoServiceClient(dial(t, addr, opts...))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// writeCert writes a self-signed certificate for 127.0.0.1 and localhost,
// like the seed's edge2mesh certificate, and returns the file paths.
func writeCert(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"Edge2Mesh Inc"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// repoBin is the directory the Makefile installs pinned tools into.
func repoBin(t testing.TB) string { return h2spectest.Bin(t) }

// tool returns the path of a pinned tool; a missing tool fails the test (run
// `make test`, which installs them) rather than skipping it.
func tool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(repoBin(t), name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not found: run the tests with `make test`, which installs pinned tools into ./bin (%v)", name, err)
	}
	return p
}
