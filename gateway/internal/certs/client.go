package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Roots is a CA bundle read from a PEM file and reloaded when its bytes
// change, as Files is: a bundle that does not parse is reported and the last
// good one stays in use.
type Roots struct {
	file  string
	every time.Duration
	log   *slog.Logger

	cur atomic.Pointer[x509.CertPool]

	mu   sync.Mutex // guards last
	last []byte
}

// NewRoots loads the bundle once (an error is fatal: nothing could be
// verified) and returns a Roots that Run keeps up to date every interval.
func NewRoots(file string, every time.Duration, log *slog.Logger) (*Roots, error) {
	r := &Roots{file: file, every: every, log: log}
	if _, err := r.check(); err != nil {
		return nil, err
	}
	return r, nil
}

// Pool is the bundle in use.
func (r *Roots) Pool() *x509.CertPool { return r.cur.Load() }

// Run checks the file every interval until ctx ends.
func (r *Roots) Run(ctx context.Context) error {
	return poll(ctx, r.every, r.check, func(changed bool, err error) {
		switch {
		case err != nil:
			r.log.Error("CA bundle not reloaded, keeping the one in use", "file", r.file, "error", err)
		case changed:
			r.log.Info("CA bundle reloaded", "file", r.file)
		}
	})
}

func (r *Roots) check() (bool, error) {
	b, err := os.ReadFile(r.file)
	if err != nil {
		return false, fmt.Errorf("certs: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if bytes.Equal(b, r.last) {
		return false, nil
	}
	r.last = b
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return false, fmt.Errorf("certs: no certificate in %s", r.file)
	}
	r.cur.Store(pool)
	return true, nil
}

// poll runs check every interval until ctx ends and reports each result
// that changed something or failed; with no interval it never checks.
func poll(ctx context.Context, every time.Duration, check func() (bool, error), report func(changed bool, err error)) error {
	if every <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if changed, err := check(); changed || err != nil {
				report(changed, err)
			}
		}
	}
}

// Upstream says how a connection to a backend is secured: what envgate
// presents and what it accepts of the backend. Its Config reads the
// certificate and roots in use at each handshake, so a rotation reaches new
// connections without touching open ones.
type Upstream struct {
	// Roots verify the backend's chain; nil uses the system's.
	Roots *Roots
	// Cert is presented when the backend asks for one (mutual TLS); nil
	// presents none.
	Cert *Files
	// ServerName is sent as SNI, and is the DNS name the backend's
	// certificate must carry when neither SANs nor SPIFFEPrefix is set.
	ServerName string
	// SANs, when set, are the names one of which the backend's certificate
	// must carry, as a DNS name or URI (Istio's subjectAltNames, matched
	// exactly as Envoy's match_typed_subject_alt_names).
	SANs []string
	// SPIFFEPrefix, when set and SANs is not, is the start every accepted
	// URI SAN has: "spiffe://cluster.local/ns/env1/sa/" accepts any
	// workload of namespace env1.
	SPIFFEPrefix string
	// ALPN is offered to the backend (default h2).
	ALPN []string
}

// Config is the client TLS configuration: ALPN h2, TLS 1.2 or later, the
// chain verified against the current roots and the identity against the
// expected names.
func (u *Upstream) Config() *tls.Config {
	alpn := u.ALPN
	if len(alpn) == 0 {
		alpn = []string{"h2"}
	}
	c := &tls.Config{
		ServerName: u.ServerName,
		NextProtos: alpn,
		MinVersion: tls.VersionTLS12,
		// The chain and names are verified by VerifyConnection, against the
		// roots in use at this handshake (they rotate) and the identity
		// rules above, which crypto/tls's own check cannot express.
		InsecureSkipVerify: true,
		VerifyConnection:   u.verify,
	}
	if u.Cert != nil {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return u.Cert.cur.Load(), nil
		}
	}
	return c
}

// verify checks the backend's chain and identity.
func (u *Upstream) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the backend presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	opts := x509.VerifyOptions{Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if u.Roots != nil {
		opts.Roots = u.Roots.Pool()
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return fmt.Errorf("backend certificate not trusted: %w", err)
	}
	uris := make([]string, 0, len(leaf.URIs))
	for _, u := range leaf.URIs {
		uris = append(uris, u.String())
	}
	switch {
	case len(u.SANs) > 0:
		for _, want := range u.SANs {
			if slices.Contains(uris, want) || slices.Contains(leaf.DNSNames, want) {
				return nil
			}
		}
		return fmt.Errorf("backend identity %s is none of the expected %v", identity(leaf, uris), u.SANs)
	case u.SPIFFEPrefix != "":
		for _, id := range uris {
			if strings.HasPrefix(id, u.SPIFFEPrefix) && len(id) > len(u.SPIFFEPrefix) && !strings.Contains(id[len(u.SPIFFEPrefix):], "/") {
				return nil
			}
		}
		return fmt.Errorf("backend identity %s is not a workload of %s*", identity(leaf, uris), u.SPIFFEPrefix)
	case u.ServerName != "":
		if err := leaf.VerifyHostname(u.ServerName); err != nil {
			return fmt.Errorf("backend certificate: %w", err)
		}
	}
	return nil
}

// identity names a certificate by its URIs, else its DNS names, else its
// subject, for messages.
func identity(c *x509.Certificate, uris []string) string {
	switch {
	case len(uris) > 0:
		return strings.Join(uris, ", ")
	case len(c.DNSNames) > 0:
		return strings.Join(c.DNSNames, ", ")
	}
	return c.Subject.String()
}
