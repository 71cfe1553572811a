// Package policy decides how envgate reaches a destination: today the TLS
// of its connections, from the upstream configuration.
package policy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"

	"github.com/envgate/envgate/gateway/internal/certs"
	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/route"
)

// Mesh certificate files, as Istio's agent writes them with OUTPUT_CERTS
// (security/pkg/nodeagent/util/util.go OutputKeyCertToDir).
const (
	MeshCertChain = "cert-chain.pem"
	MeshKey       = "key.pem"
	MeshRootCert  = "root-cert.pem"
)

// TLS hands out the client TLS configuration of each destination: nil for
// DISABLE (h2c), one configuration per endpoint set otherwise, the same one
// every time (upstream clients are keyed by it).
type TLS struct {
	mode        string
	base        certs.Upstream // roots, client certificate, configured SNI and SANs
	trustDomain string
	reloaders   []func(context.Context) error

	mu    sync.Mutex             // guards bySet; taken alone
	bySet map[string]*tls.Config // endpoint set -> configuration; bounded by the routes' destinations
}

// NewTLS loads the certificate files the mode needs; a file that does not
// load is an error (nothing could be verified or presented).
func NewTLS(c config.UpstreamTLS, mesh config.Mesh, log *slog.Logger) (*TLS, error) {
	t := &TLS{mode: c.Mode, trustDomain: mesh.TrustDomain, bySet: map[string]*tls.Config{},
		base: certs.Upstream{ServerName: c.SNI, SANs: c.SubjectAltNames}}
	caFile, certFile, keyFile := c.CACertificates, c.ClientCertificate, c.PrivateKey
	if c.Mode == config.TLSIstioMutual {
		caFile = filepath.Join(mesh.CertDir, MeshRootCert)
		certFile, keyFile = filepath.Join(mesh.CertDir, MeshCertChain), filepath.Join(mesh.CertDir, MeshKey)
	}
	if c.Mode == config.TLSDisable {
		return t, nil
	}
	if caFile != "" {
		r, err := certs.NewRoots(caFile, mesh.ReloadInterval, log)
		if err != nil {
			return nil, fmt.Errorf("upstream TLS: %w", err)
		}
		t.base.Roots = r
		t.reloaders = append(t.reloaders, r.Run)
	}
	if certFile != "" {
		f, err := certs.NewFiles(certFile, keyFile, mesh.ReloadInterval, log)
		if err != nil {
			return nil, fmt.Errorf("upstream TLS: %w", err)
		}
		t.base.Cert = f
		t.reloaders = append(t.reloaders, f.Run)
	}
	return t, nil
}

// Run reloads the certificate files until ctx ends.
func (t *TLS) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, run := range t.reloaders {
		wg.Go(func() { _ = run(ctx) })
	}
	wg.Wait()
	return nil
}

// Mode is the configured mode.
func (t *TLS) Mode() string { return t.mode }

// For is the configuration of connections to d, whose endpoint set is set
// ("app-service.env1:50051"); nil means h2c.
func (t *TLS) For(d route.Destination, set string) *tls.Config {
	if t.mode == config.TLSDisable {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.bySet[set]; ok {
		return c
	}
	u := t.base
	host := d.Service + "." + d.Namespace + ".svc.cluster.local"
	switch t.mode {
	case config.TLSIstioMutual:
		// As Istio's sidecars (pilot/pkg/networking/core/cluster_tls.go
		// buildUpstreamClusterTLSContext): SNI the cluster
		// name, outbound|<port>|<subset>|<host> (model.BuildSubsetKey), ALPN
		// "istio", "h2" (pkg/model/proxy.go ALPNInMeshH2), and any workload
		// of the destination's namespace unless SANs are given (Istio
		// lists the service's accounts, which envgate, reading pod metadata
		// only, does not know).
		if u.ServerName == "" {
			u.ServerName = fmt.Sprintf("outbound|%s||%s", portOf(d, set), host)
		}
		u.ALPN = []string{"istio", "h2"}
		if len(u.SANs) == 0 {
			u.SPIFFEPrefix = fmt.Sprintf("spiffe://%s/ns/%s/sa/", t.trustDomain, d.Namespace)
		}
	default:
		// SIMPLE and MUTUAL: without sni, the host name is the SNI and,
		// without SANs, the name the certificate must carry. Istio sets
		// Envoy's auto_sni and auto_san_validation there
		// (cluster_tls.go setAutoSniAndAutoSanValidation), which take the
		// request's host; at a gateway that is the client's authority,
		// which says nothing of the backend, so envgate uses the
		// destination's host.
		if u.ServerName == "" {
			u.ServerName = host
		}
	}
	c := u.Config()
	t.bySet[set] = c
	return c
}

// Describe says how connections to d are secured, for the views.
func (t *TLS) Describe(d route.Destination, set string) string {
	c := t.For(d, set)
	if c == nil {
		return "DISABLE (h2c)"
	}
	return t.mode + ", SNI " + c.ServerName
}

// portOf is the destination's Service port number: the end of its set key
// when discovery knows the Service, else the port the route gave.
func portOf(d route.Destination, set string) string {
	if i := strings.LastIndexByte(set, ':'); i >= 0 {
		return set[i+1:]
	}
	return d.Port
}
