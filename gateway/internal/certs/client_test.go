package certs

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envgate/envgate/internal/testca"
)

// The backend identity rules, on real certificates of a test CA.
func TestUpstreamVerify(t *testing.T) {
	ca := testca.New(t, "mesh")
	other := testca.New(t, "other")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	testca.WriteAtomic(t, caFile, ca.PEM)
	roots, err := NewRoots(caFile, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	state := func(c *testca.CA, l testca.Leaf) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.Issue(t, l).Cert}}
	}
	spiffe := func(id string) testca.Leaf { return testca.Leaf{URIs: []string{id}} }
	for _, tc := range []struct {
		name string
		up   Upstream
		cs   tls.ConnectionState
		want string // "" accepted
	}{
		{"workload of the namespace", Upstream{Roots: roots, SPIFFEPrefix: "spiffe://cluster.local/ns/env1/sa/"}, state(ca, spiffe("spiffe://cluster.local/ns/env1/sa/app")), ""},
		{"other namespace", Upstream{Roots: roots, SPIFFEPrefix: "spiffe://cluster.local/ns/env1/sa/"}, state(ca, spiffe("spiffe://cluster.local/ns/env10/sa/app")), "not a workload of"},
		{"nested path is no account", Upstream{Roots: roots, SPIFFEPrefix: "spiffe://cluster.local/ns/env1/sa/"}, state(ca, spiffe("spiffe://cluster.local/ns/env1/sa/app/x")), "not a workload of"},
		{"empty account", Upstream{Roots: roots, SPIFFEPrefix: "spiffe://cluster.local/ns/env1/sa/"}, state(ca, spiffe("spiffe://cluster.local/ns/env1/sa/")), "not a workload of"},
		{"unknown CA", Upstream{Roots: roots, SPIFFEPrefix: "spiffe://cluster.local/ns/env1/sa/"}, state(other, spiffe("spiffe://cluster.local/ns/env1/sa/app")), "certificate signed by unknown authority"},
		{"SAN listed", Upstream{Roots: roots, SANs: []string{"spiffe://cluster.local/ns/env1/sa/app"}}, state(ca, spiffe("spiffe://cluster.local/ns/env1/sa/app")), ""},
		{"SAN not listed", Upstream{Roots: roots, SANs: []string{"spiffe://cluster.local/ns/env1/sa/app"}}, state(ca, spiffe("spiffe://cluster.local/ns/env1/sa/other")), "none of the expected"},
		{"DNS SAN listed", Upstream{Roots: roots, SANs: []string{"api.internal"}}, state(ca, testca.Leaf{DNS: []string{"api.internal"}}), ""},
		{"host name", Upstream{Roots: roots, ServerName: "app-service.env1.svc.cluster.local"}, state(ca, testca.Leaf{DNS: []string{"app-service.env1.svc.cluster.local"}}), ""},
		{"wrong host name", Upstream{Roots: roots, ServerName: "app-service.env1.svc.cluster.local"}, state(ca, testca.Leaf{DNS: []string{"app-service.env2.svc.cluster.local"}}), "not app-service.env1.svc.cluster.local"},
		{"no certificate", Upstream{Roots: roots}, tls.ConnectionState{}, "presented no certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.up.verify(tc.cs)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("verify: %v, want %q", err, tc.want)
			}
		})
	}
}

// A CA bundle that stops parsing keeps the last good one; a good one is
// swapped in.
func TestRootsReloadKeepsLastGood(t *testing.T) {
	first, second := testca.New(t, "first"), testca.New(t, "second")
	file := filepath.Join(t.TempDir(), "root-cert.pem")
	testca.WriteAtomic(t, file, first.PEM)
	r, err := NewRoots(file, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	trusts := func(ca *testca.CA) bool {
		_, err := ca.Issue(t, testca.Leaf{DNS: []string{"x"}}).Cert.Verify(x509.VerifyOptions{Roots: r.Pool()})
		return err == nil
	}
	testca.WriteAtomic(t, file, []byte("garbage"))
	if changed, err := r.check(); changed || err == nil || !trusts(first) {
		t.Fatalf("garbage: changed %v err %v; the first root must stay", changed, err)
	}
	testca.WriteAtomic(t, file, second.PEM)
	if changed, err := r.check(); !changed || err != nil || !trusts(second) || trusts(first) {
		t.Fatalf("second root: changed %v err %v", changed, err)
	}
}
