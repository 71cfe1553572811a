package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/acme/autocert"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/envgate/envgate/gateway/internal/certs"
	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/internal/kubetest"
)

// The gateway gets its certificate from an ACME CA, Pebble, answering the
// TLS-ALPN-01 challenge on its own TLS listener, and grpcurl then calls
// through it trusting only Pebble's root. Pebble resolves the name with
// pebble-challtestsrv's DNS, which answers 127.0.0.1.
func TestACMECertificateFromPebble(t *testing.T) {
	const host = "envgate.test"
	dnsPort, acmePort, mgmtPort, gwPort := kubetest.FreePort(t), kubetest.FreePort(t), kubetest.FreePort(t), kubetest.FreePort(t)
	pebbleCerts := filepath.Join(repoBin(t), "pebble-certs")
	startProcess(t, nil, tool(t, "pebble-challtestsrv"),
		"-dnsserver", "127.0.0.1:"+dnsPort, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-management", "127.0.0.1:"+kubetest.FreePort(t), "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "")

	cfgFile := filepath.Join(t.TempDir(), "pebble.json")
	pcfg, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":                  "127.0.0.1:" + acmePort,
		"managementListenAddress":        "127.0.0.1:" + mgmtPort,
		"certificate":                    filepath.Join(pebbleCerts, "cert.pem"),
		"privateKey":                     filepath.Join(pebbleCerts, "key.pem"),
		"httpPort":                       5002,
		"tlsPort":                        json.Number(gwPort), // TLS-ALPN-01 is checked on the gateway's port
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}})
	if err := os.WriteFile(cfgFile, pcfg, 0o600); err != nil {
		t.Fatal(err)
	}
	pebble := startProcess(t, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"}, tool(t, "pebble"),
		"-config", cfgFile, "-dnsserver", "127.0.0.1:"+dnsPort)
	pebble.waitLine(t, `ACME directory available at`)

	b := startBackend(t, "env1")
	cfg := testConfig(t, map[string][]string{"env1": {b.addr}})
	cfg.Listeners[0] = config.Listener{Address: "127.0.0.1:" + gwPort, TLS: &config.TLS{ACME: &config.ACME{
		Hosts:        []string{host},
		DirectoryURL: "https://127.0.0.1:" + acmePort + "/dir",
		CAFile:       filepath.Join(pebbleCerts, "pebble.minica.pem"),
		CacheDir:     t.TempDir(),
	}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	gw := startGateway(t, cfg, nil)

	// grpcurl trusts Pebble's issuing root only, fetched from its
	// management API.
	roots, err := certs.LoadRoots(filepath.Join(pebbleCerts, "pebble.minica.pem"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	// Pebble's log line for its management interface can come before
	// that listener accepts (a make test run was refused right after it),
	// so the first requests may be refused: they are retried for 10 s.
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; {
		if resp, err = hc.Get("https://127.0.0.1:" + mgmtPort + "/roots/0"); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the port, not synchronisation
	}
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	rootFile := filepath.Join(t.TempDir(), "pebble-root.pem")
	if err := os.WriteFile(rootFile, rootPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	out, err := grpcurl(t, "-connect-timeout", "60", "-cacert", rootFile, "-servername", host,
		"-proto", "proto/echo.proto", "-rpc-header", "env: env1", gw.Addrs()[0], "echo.EchoService/Call")
	if err != nil || !strings.Contains(out, "Hello World! ServerEnv:env1, ClientEnv:env1") {
		t.Fatalf("grpcurl over the ACME certificate: %v\n%s", err, out)
	}

	// The certificate is Pebble's, for the host.
	conn, err := tls.Dial("tcp", gw.Addrs()[0], &tls.Config{ServerName: host, RootCAs: poolOf(t, rootPEM), NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	leaf := conn.ConnectionState().PeerCertificates[0]
	if leaf.VerifyHostname(host) != nil || leaf.Issuer.CommonName == leaf.Subject.CommonName {
		t.Fatalf("served %v issued by %v", leaf.Subject, leaf.Issuer)
	}
	// Names off the allow-list get no certificate.
	if _, err := tls.Dial("tcp", gw.Addrs()[0], &tls.Config{ServerName: "other.test", InsecureSkipVerify: true}); err == nil {
		t.Fatal("a handshake for a host not on the allow-list succeeded")
	}
}

func poolOf(t *testing.T, pemBytes []byte) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemBytes) {
		t.Fatal("no root in Pebble's answer")
	}
	return p
}

// The Secret cache keeps what autocert stores in one Secret, shared by
// replicas, on a real API server.
func TestACMESecretCache(t *testing.T) {
	cp := kubetest.Start(t)
	cp.EnsureNamespace(t, "envgate-system", nil)
	secrets := dynamic.NewForConfigOrDie(cp.Config).Resource(certs.SecretsResource).Namespace("envgate-system")
	a := &certs.SecretCache{Secrets: secrets, Name: "envgate-acme"}
	b := &certs.SecretCache{Secrets: secrets, Name: "envgate-acme"} // another replica
	ctx := context.Background()
	if _, err := a.Get(ctx, "acme_account+key"); err != autocert.ErrCacheMiss {
		t.Fatalf("empty cache: %v", err)
	}
	// Two replicas writing at once both land.
	errs := make(chan error, 2)
	go func() { errs <- a.Put(ctx, "acme_account+key", []byte("account")) }()
	go func() { errs <- b.Put(ctx, "envgate.test", []byte("cert")) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for key, want := range map[string]string{"acme_account+key": "account", "envgate.test": "cert"} {
		got, err := b.Get(ctx, key)
		if err != nil || string(got) != want {
			t.Fatalf("%s: %q %v", key, got, err)
		}
	}
	if err := a.Delete(ctx, "envgate.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "envgate.test"); err != autocert.ErrCacheMiss {
		t.Fatalf("deleted key: %v", err)
	}
	// As any other client of the API sees it: one key, the account's.
	sec, err := cp.Admin.CoreV1().Secrets("envgate-system").Get(ctx, "envgate-acme", metav1.GetOptions{})
	if err != nil || len(sec.Data) != 1 || string(sec.Data["YWNtZV9hY2NvdW50K2tleQ"]) != "account" {
		t.Fatalf("secret %v %v", sec, err)
	}
}
