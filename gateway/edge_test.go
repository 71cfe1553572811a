package main

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

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
