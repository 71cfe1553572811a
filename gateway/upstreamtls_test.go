package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/internal/testca"
	"github.com/envgate/envgate/proto/echopb"
)

// tlsBackend is a real echo backend behind TLS that records, per call, the
// client certificate it was shown and the SNI of the connection.
type tlsBackend struct {
	*backend
	mu      sync.Mutex
	serials []string // client certificate serial per call
	snis    []string // SNI per handshake
}

// startTLSBackend serves with cert; with clientCAs it requires and
// verifies a client certificate, as an Istio sidecar under STRICT mTLS
// does. extra server options (connection age) may follow.
func startTLSBackend(t *testing.T, env string, cert tls.Certificate, clientCAs *x509.CertPool, extra ...grpc.ServerOption) *tlsBackend {
	t.Helper()
	tb := &tlsBackend{}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}
	if clientCAs != nil {
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, clientCAs
	}
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		tb.mu.Lock()
		tb.snis = append(tb.snis, hello.ServerName)
		tb.mu.Unlock()
		return nil, nil
	}
	record := grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		serial := ""
		if p, ok := peer.FromContext(ctx); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				serial = ti.State.PeerCertificates[0].SerialNumber.String()
			}
		}
		tb.mu.Lock()
		tb.serials = append(tb.serials, serial)
		tb.mu.Unlock()
		return h(ctx, req)
	})
	tb.backend = startBackend(t, env, append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(cfg)), record}, extra...)...)
	return tb
}

// lastSNI is the SNI of the latest handshake.
func (tb *tlsBackend) lastSNI() string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.snis) == 0 {
		return ""
	}
	return tb.snis[len(tb.snis)-1]
}

// serialCounts counts the calls made with each client certificate.
func (tb *tlsBackend) serialCounts() map[string]int {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	n := map[string]int{}
	for _, s := range tb.serials {
		n[s]++
	}
	return n
}

// meshDir is envgate's mesh certificate directory with a workload
// certificate of envgate's own identity, as the certificate-sharing
// istio-proxy sidecar writes it.
func meshDir(t *testing.T, ca *testca.CA) (string, testca.Issued) {
	t.Helper()
	dir := t.TempDir()
	leaf := ca.Issue(t, testca.Leaf{URIs: []string{"spiffe://cluster.local/ns/envgate-system/sa/envgate"}})
	testca.WriteMesh(t, dir, ca, leaf)
	return dir, leaf
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func tlsGateway(t *testing.T, b *tlsBackend, tlsCfg config.UpstreamTLS, mesh config.Mesh) *runningGateway {
	t.Helper()
	cfg := testConfig(t, map[string][]string{"env1": {b.addr}})
	cfg.Upstream.TLS, cfg.Upstream.Mesh = tlsCfg, mesh
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return startGateway(t, cfg, nil)
}

// Every upstream TLS mode against a real TLS backend (Issue 12, point 1):
// ISTIO_MUTUAL with the mesh's workload certificates (the backend, like a
// STRICT sidecar, requires a client certificate of the mesh CA, and envgate
// verifies the backend's SPIFFE identity is a workload of env1), SIMPLE
// with a CA bundle and the host name verified, MUTUAL with envgate's own
// certificate presented.
func TestUpstreamTLSModes(t *testing.T) {
	mesh := testca.New(t, "mesh")
	other := testca.New(t, "private CA")
	dir, own := meshDir(t, mesh)
	files := t.TempDir()
	client := other.Issue(t, testca.Leaf{DNS: []string{"envgate.envgate-system.svc.cluster.local"}})
	for _, tc := range []struct {
		name      string
		backend   func() *tlsBackend
		tls       config.UpstreamTLS
		wantCert  string // serial of the client certificate the backend must see ("" none)
		wantSNI   string
		sniSuffix string
	}{
		{
			name: "ISTIO_MUTUAL",
			backend: func() *tlsBackend {
				return startTLSBackend(t, "env1", mesh.Issue(t, testca.Leaf{URIs: []string{"spiffe://cluster.local/ns/env1/sa/app"}}).TLS(t), mesh.Pool())
			},
			tls:      config.UpstreamTLS{Mode: config.TLSIstioMutual},
			wantCert: own.Cert.SerialNumber.String(),
			// Istio's SNI is the cluster name, outbound|<port>||<host>
			// (pilot/pkg/networking/core/cluster_tls.go
			// buildUpstreamClusterTLSContext); with static endpoints the
			// port is routing.port as written.
			wantSNI: "outbound|grpc||app-service.env1.svc.cluster.local",
		},
		{
			name: "SIMPLE",
			backend: func() *tlsBackend {
				return startTLSBackend(t, "env1", other.Issue(t, testca.Leaf{DNS: []string{"app-service.env1.svc.cluster.local"}}).TLS(t), nil)
			},
			tls:     config.UpstreamTLS{Mode: config.TLSSimple, CACertificates: writeFile(t, files, "ca.pem", other.PEM)},
			wantSNI: "app-service.env1.svc.cluster.local",
		},
		{
			name: "MUTUAL",
			backend: func() *tlsBackend {
				return startTLSBackend(t, "env1", other.Issue(t, testca.Leaf{DNS: []string{"api.internal"}}).TLS(t), other.Pool())
			},
			tls: config.UpstreamTLS{Mode: config.TLSMutual, CACertificates: writeFile(t, files, "ca.pem", other.PEM),
				ClientCertificate: writeFile(t, files, "client.pem", client.CertPEM), PrivateKey: writeFile(t, files, "client-key.pem", client.KeyPEM),
				SNI: "api.internal", SubjectAltNames: []string{"api.internal"}},
			wantCert: client.Cert.SerialNumber.String(),
			wantSNI:  "api.internal",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.backend()
			gw := tlsGateway(t, b, tc.tls, config.Mesh{CertDir: dir})
			c := echoClient(t, gw.Addrs()[0])
			resp, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{IncludeDetails: true})
			if err != nil || resp.GetServer() != b.addr {
				t.Fatalf("call: %v %v", resp, err)
			}
			if got := b.serialCounts(); tc.wantCert != "" && got[tc.wantCert] != 1 {
				t.Errorf("client certificates seen by the backend: %v, want %s", got, tc.wantCert)
			}
			if got := b.lastSNI(); got != tc.wantSNI {
				t.Errorf("SNI %q, want %q", got, tc.wantSNI)
			}
		})
	}
}

// A backend that is not who the destination says, or whose CA envgate does
// not trust, or that does not speak TLS, is refused: the call fails
// UNAVAILABLE naming the endpoint and the reason, and no call reaches it.
func TestUpstreamTLSRefusals(t *testing.T) {
	mesh := testca.New(t, "mesh")
	stranger := testca.New(t, "stranger")
	dir, _ := meshDir(t, mesh)
	for _, tc := range []struct {
		name    string
		backend func() *backend
		want    string
	}{
		{"another namespace's workload", func() *backend {
			return startTLSBackend(t, "env1", mesh.Issue(t, testca.Leaf{URIs: []string{"spiffe://cluster.local/ns/env2/sa/app"}}).TLS(t), mesh.Pool()).backend
		}, "backend identity spiffe://cluster.local/ns/env2/sa/app is not a workload of spiffe://cluster.local/ns/env1/sa/*"},
		{"another trust domain", func() *backend {
			return startTLSBackend(t, "env1", mesh.Issue(t, testca.Leaf{URIs: []string{"spiffe://evil.example/ns/env1/sa/app"}}).TLS(t), mesh.Pool()).backend
		}, "is not a workload of spiffe://cluster.local/ns/env1/sa/*"},
		{"unknown CA", func() *backend {
			return startTLSBackend(t, "env1", stranger.Issue(t, testca.Leaf{URIs: []string{"spiffe://cluster.local/ns/env1/sa/app"}}).TLS(t), mesh.Pool()).backend
		}, "backend certificate not trusted: x509: certificate signed by unknown authority"},
		{"plaintext backend", func() *backend { return startBackend(t, "env1") }, "TLS handshake"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.backend()
			gw := tlsGateway(t, &tlsBackend{backend: b}, config.UpstreamTLS{Mode: config.TLSIstioMutual}, config.Mesh{CertDir: dir})
			c := echoClient(t, gw.Addrs()[0])
			_, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{})
			if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), b.addr) || !strings.Contains(st.Message(), tc.want) {
				t.Fatalf("call: %v, want UNAVAILABLE naming %s and %q", err, b.addr, tc.want)
			}
			t.Logf("refused: %v", err)
			if n := b.callCount(); n != 0 {
				t.Fatalf("the refused backend got %d calls", n)
			}
		})
	}
}

// The mesh certificates rotate (Istio's agent rewrites them, every 24 h by
// default, key first): under 200 calls/s, envgate reloads them without a
// restart and without a failed call; connections opened after the
// rotation present the new certificate, and a stream opened before it goes
// on. The backend closes each connection
// after 300 ms (gracefully, as a rolling sidecar would), so new ones keep
// being opened.
func TestMeshCertificatesRotateUnderLoad(t *testing.T) {
	mesh := testca.New(t, "mesh")
	dir, old := meshDir(t, mesh)
	b := startTLSBackend(t, "env1", mesh.Issue(t, testca.Leaf{URIs: []string{"spiffe://cluster.local/ns/env1/sa/app"}}).TLS(t), mesh.Pool(),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: 300 * time.Millisecond, MaxConnectionAgeGrace: 5 * time.Second}))
	gw := tlsGateway(t, b, config.UpstreamTLS{Mode: config.TLSIstioMutual}, config.Mesh{CertDir: dir, ReloadInterval: 50 * time.Millisecond})
	c := echoClient(t, gw.Addrs()[0])

	var failed, ok atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond) // 200 calls/s
		defer tick.Stop()
		var calls sync.WaitGroup
		defer calls.Wait()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			calls.Go(func() {
				ctx, cancel := context.WithTimeout(withEnv(context.Background(), "env1"), 10*time.Second)
				defer cancel()
				if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
					failed.Add(1)
					t.Logf("call failed: %v", err)
					return
				}
				ok.Add(1)
			})
		}
	})
	// A stream opened before the rotation, on a connection made with the
	// first certificate.
	bidi, err := c.BidiStream(withEnv(testCtx(t), "env1"))
	if err != nil {
		t.Fatal(err)
	}
	exchange := func(what string) {
		t.Helper()
		if err := bidi.Send(&echopb.EchoRequest{Text: what}); err != nil {
			t.Fatalf("%s: send: %v", what, err)
		}
		if _, err := bidi.Recv(); err != nil {
			t.Fatalf("%s: receive: %v", what, err)
		}
	}
	exchange("before the rotation")
	waitUntil(t, "calls with the first certificate", func() bool { return b.serialCounts()[old.Cert.SerialNumber.String()] >= 100 })
	rotated := mesh.Issue(t, testca.Leaf{URIs: []string{"spiffe://cluster.local/ns/envgate-system/sa/envgate"}})
	testca.WriteMesh(t, dir, mesh, rotated)
	waitUntil(t, "calls with the rotated certificate", func() bool { return b.serialCounts()[rotated.Cert.SerialNumber.String()] >= 100 })
	// Open connections are not touched by the rotation.
	exchange("after the rotation, on the stream opened before it")
	if err := bidi.CloseSend(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed across the rotation", failed.Load(), failed.Load()+ok.Load())
	}
	t.Logf("%d calls, 0 failed; by client certificate: %v", ok.Load(), b.serialCounts())
}
