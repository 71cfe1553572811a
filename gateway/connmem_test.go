package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/proto/echopb"
)

// An idle TLS client connection holds no read buffer in gRPC's server: the
// TLS connection already buffers a decrypted record, and gRPC's default
// 32 KiB bufio.Reader per connection was two thirds of an idle
// connection's heap (make bench's connection rows: 66 -> 41 KiB of RSS per
// idle connection, HAProxy 21-23). Every allocation is recorded
// (MemProfileRate 1) and the live ones are attributed by stack.
func TestIdleTLSConnectionsHoldNoReadBuffer(t *testing.T) {
	const conns = 40
	cfg := testConfig(t, map[string][]string{"env1": {startBackend(t, "env1").addr}})
	certFile, keyFile := writeCert(t)
	cfg.Listeners[0].TLS = &config.TLS{CertFile: certFile, KeyFile: keyFile, ReloadInterval: time.Hour}
	gw := startGateway(t, cfg, nil)

	pem, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})

	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "env", "env1")
	for range conns {
		cc := dial(t, gw.Addrs()[0], grpc.WithTransportCredentials(creds))
		if _, err := echopb.NewEchoServiceClient(cc).Call(ctx, &echopb.EchoRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	// Two cycles: the profile shows the heap as of the last completed one.
	runtime.GC()
	runtime.GC()

	var buffers, transports int64
	records := make([]runtime.MemProfileRecord, 1<<14)
	n, ok := runtime.MemProfile(records, false)
	if !ok {
		t.Fatalf("memory profile has more than %d records", len(records))
	}
	for _, r := range records[:n] {
		stack := funcNames(r.Stack())
		if !strings.Contains(stack, "transport.NewServerTransport") {
			continue
		}
		transports += r.InUseBytes()
		if strings.Contains(stack, "bufio.NewReader") {
			buffers += r.InUseBytes()
		}
	}
	t.Logf("gRPC server transports of %d idle TLS connections: %d B live, %d B each; read buffers %d B", conns, transports, transports/conns, buffers)
	if transports == 0 {
		t.Fatal("no server transport allocation recorded: the attribution is broken")
	}
	if buffers > 0 {
		t.Fatalf("idle TLS connections hold %d B of gRPC read buffers (%d B each), want none", buffers, buffers/conns)
	}
}

func funcNames(pcs []uintptr) string {
	var b strings.Builder
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		b.WriteString(f.Function)
		b.WriteByte('\n')
		if !more {
			return b.String()
		}
	}
}
