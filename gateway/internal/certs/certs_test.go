package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func pair(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{cn}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k})
}

// secretVolume lays files out as the kubelet does for a Secret volume:
// a timestamped directory, ..data pointing at it, and each key a symlink
// through ..data. update swaps ..data atomically to a new directory.
type secretVolume struct {
	dir string
	n   int
}

func (v *secretVolume) update(t *testing.T, files map[string][]byte) {
	t.Helper()
	v.n++
	ts := filepath.Join(v.dir, "..2026_11_22_00_00_0"+string(rune('0'+v.n)))
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(ts, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

func subject(t *testing.T, f *Files) string {
	t.Helper()
	c, err := f.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.Subject.CommonName
}

func TestFilesFollowsSecretVolumeAndKeepsLastGood(t *testing.T) {
	v := &secretVolume{dir: t.TempDir()}
	c1, k1 := pair(t, "one.example")
	v.update(t, map[string][]byte{"tls.crt": c1, "tls.key": k1})
	f, err := NewFiles(filepath.Join(v.dir, "tls.crt"), filepath.Join(v.dir, "tls.key"), time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if got := subject(t, f); got != "one.example" {
		t.Fatalf("serving %s", got)
	}
	if changed, err := f.check(); changed || err != nil {
		t.Fatalf("unchanged files: changed %v, %v", changed, err)
	}

	c2, k2 := pair(t, "two.example")
	v.update(t, map[string][]byte{"tls.crt": c2, "tls.key": k2})
	if changed, err := f.check(); !changed || err != nil {
		t.Fatalf("after the ..data swap: changed %v, %v", changed, err)
	}
	if got := subject(t, f); got != "two.example" {
		t.Fatalf("serving %s after the swap", got)
	}

	// A broken update: the key of another certificate, then garbage.
	_, k3 := pair(t, "three.example")
	for name, files := range map[string]map[string][]byte{
		"mismatched key": {"tls.crt": c1, "tls.key": k3},
		"garbage":        {"tls.crt": []byte("not a certificate"), "tls.key": k2},
	} {
		v.update(t, files)
		if changed, err := f.check(); changed || err == nil {
			t.Fatalf("%s: changed %v, err %v; want an error", name, changed, err)
		}
		if got := subject(t, f); got != "two.example" {
			t.Fatalf("%s: serving %s, want the last good certificate", name, got)
		}
	}
}

func TestNewFilesFailsWithoutACertificate(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewFiles(filepath.Join(dir, "no.crt"), filepath.Join(dir, "no.key"), time.Hour, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("no error for missing files")
	}
}
