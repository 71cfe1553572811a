// Package certs provides serving certificates: PEM files reloaded when they
// change (a kubernetes.io/tls Secret mounted as a volume), or ACME
// certificates from autocert. Both satisfy Provider, which is all a TLS
// listener needs. For upstream connections it provides the client side:
// client certificates and CA bundles from files, reloaded the same way, and
// the verification of a backend's identity (Upstream).
package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Provider hands out the certificate for a TLS handshake. *autocert.Manager
// satisfies it too.
type Provider interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// Files serves a certificate and key from PEM files and reloads them when
// their bytes change. Files are read through their paths, so the kubelet's
// atomic update of a Secret volume (a new directory, then the ..data
// symlink swapped to it) is seen like any other change. A pair that does not
// load (half written, mismatched, garbage) is reported and the last good
// certificate stays in use. Handshakes already done are not touched, so
// established connections go on.
type Files struct {
	certFile, keyFile string
	every             time.Duration
	log               *slog.Logger

	cur atomic.Pointer[tls.Certificate]

	mu                sync.Mutex // guards the last bytes read and onReload
	lastCert, lastKey []byte
	onReload          func(err error)
}

// NewFiles loads the pair once (an error here is fatal: there is nothing to
// serve with) and returns a Files that Run keeps up to date every interval.
func NewFiles(certFile, keyFile string, every time.Duration, log *slog.Logger) (*Files, error) {
	f := &Files{certFile: certFile, keyFile: keyFile, every: every, log: log}
	changed, err := f.check()
	if err != nil {
		return nil, err
	}
	if !changed {
		return nil, fmt.Errorf("certs: no certificate in %s", certFile)
	}
	return f, nil
}

// OnReload registers a function called after every attempted reload with its
// result (nil: a new certificate is in use), for metrics.
func (f *Files) OnReload(fn func(err error)) {
	f.mu.Lock()
	f.onReload = fn
	f.mu.Unlock()
}

// GetCertificate returns the certificate in use.
func (f *Files) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.cur.Load(), nil
}

// Run checks the files every interval until ctx ends; with no interval it
// never reloads.
func (f *Files) Run(ctx context.Context) error {
	return poll(ctx, f.every, f.check, func(changed bool, err error) {
		f.mu.Lock()
		hook := f.onReload
		f.mu.Unlock()
		switch {
		case err != nil:
			f.log.Error("certificate not reloaded, keeping the one in use", "cert", f.certFile, "error", err)
		case changed:
			f.log.Info("certificate reloaded", "cert", f.certFile, "notAfter", f.cur.Load().Leaf.NotAfter)
		}
		if hook != nil {
			hook(err)
		}
	})
}

// check reads both files and swaps in their certificate if their bytes
// changed and they load. It reports whether a new certificate is in use.
func (f *Files) check() (bool, error) {
	certPEM, err := os.ReadFile(f.certFile)
	if err != nil {
		return false, fmt.Errorf("certs: %w", err)
	}
	keyPEM, err := os.ReadFile(f.keyFile)
	if err != nil {
		return false, fmt.Errorf("certs: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if bytes.Equal(certPEM, f.lastCert) && bytes.Equal(keyPEM, f.lastKey) {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// Remember the bad bytes so they are reported once, not every tick;
		// a later change is tried again.
		f.lastCert, f.lastKey = certPEM, keyPEM
		return false, fmt.Errorf("certs: %s and %s: %w", f.certFile, f.keyFile, err)
	}
	f.lastCert, f.lastKey = certPEM, keyPEM
	f.cur.Store(&cert)
	return true, nil
}
