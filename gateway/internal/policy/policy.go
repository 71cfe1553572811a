// Package policy turns what applies to a destination (the upstream
// configuration, and the DestinationRule policy for its host, subset and
// port) into how its upstream client reaches it: TLS, load balancing,
// outlier detection, connection pool limits.
package policy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/envgate/envgate/gateway/internal/certs"
	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/destinationrule"
	"github.com/envgate/envgate/gateway/internal/h2client"
	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/upstream"
)

// Mesh certificate files, as Istio's agent writes them with OUTPUT_CERTS
// (security/pkg/nodeagent/util/util.go OutputKeyCertToDir).
const (
	MeshCertChain = "cert-chain.pem"
	MeshKey       = "key.pem"
	MeshRootCert  = "root-cert.pem"
)

// Resolver hands out the upstream policy of each destination. Certificate
// files are loaded on first use and reloaded by Run.
type Resolver struct {
	def     config.UpstreamTLS // the configured default, for destinations no DestinationRule's tls covers
	defPort string             // routing.port: the port of a destination that names none, when discovery cannot tell
	mesh    config.Mesh
	log     *slog.Logger

	// mu guards what follows; it is taken alone, and never across a file
	// read of another goroutine's (loads happen under it, which is rare:
	// once per distinct file set).
	mu      sync.Mutex
	cache   map[cacheKey]*upstream.Policy // bounded by destinations x policies of one merge; reset on a new merge
	files   map[[3]string]*loaded         // certificate files by (ca, cert, key)
	runners []func(context.Context) error // reloaders not yet started
	kick    chan struct{}
	gen     *destinationrule.Result // the merge the cache was built for
}

type loaded struct {
	roots *certs.Roots
	cert  *certs.Files
	err   error
}

type cacheKey struct {
	set    string
	tls    *destinationrule.ClientTLS
	lb     *destinationrule.LoadBalancer
	od     *destinationrule.OutlierDetection
	cp     *destinationrule.ConnectionPool
	subset string
}

// NewResolver checks that the default's files load (a missing mesh
// directory with ISTIO_MUTUAL is an error at start, not at the first call).
func NewResolver(def config.UpstreamTLS, mesh config.Mesh, defPort string, log *slog.Logger) (*Resolver, error) {
	r := &Resolver{def: def, defPort: defPort, mesh: mesh, log: log, cache: map[cacheKey]*upstream.Policy{}, files: map[[3]string]*loaded{}, kick: make(chan struct{}, 1)}
	if def.Mode != config.TLSDisable {
		r.mu.Lock()
		l := r.loadLocked(r.filesOf(def.Mode, def.CACertificates, def.ClientCertificate, def.PrivateKey))
		r.mu.Unlock()
		if l.err != nil {
			return nil, fmt.Errorf("upstream TLS: %w", l.err)
		}
	}
	return r, nil
}

// Run reloads the certificate files in use until ctx ends.
func (r *Resolver) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		r.mu.Lock()
		runners := r.runners
		r.runners = nil
		r.mu.Unlock()
		for _, run := range runners {
			wg.Go(func() { _ = run(ctx) })
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		}
	}
}

// For is the upstream policy of calls to d through endpoint set set, under
// the DestinationRule policy p of merge gen (nil: none); nil means the
// pool's defaults (h2c). The same policy comes back for the same inputs.
func (r *Resolver) For(d route.Destination, set string, p destinationrule.Policy, gen *destinationrule.Result) (*upstream.Policy, error) {
	if p.TLS == nil && p.LoadBalancer == nil && p.OutlierDetection == nil && p.ConnectionPool == nil && r.def.Mode == config.TLSDisable {
		return nil, nil
	}
	k := cacheKey{set, p.TLS, p.LoadBalancer, p.OutlierDetection, p.ConnectionPool, p.Subset}
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen != r.gen {
		// A new merge: its policies have new pointers; clients are shared
		// through the content key, not these.
		r.cache, r.gen = map[cacheKey]*upstream.Policy{}, gen
	}
	if up, ok := r.cache[k]; ok {
		return up, nil
	}
	up, err := r.buildLocked(d, set, p)
	if err != nil {
		return nil, err
	}
	r.cache[k] = up
	return up, nil
}

func (r *Resolver) buildLocked(d route.Destination, set string, p destinationrule.Policy) (*upstream.Policy, error) {
	up := &upstream.Policy{}
	t := p.TLS
	if t == nil {
		dt := r.def
		t = &destinationrule.ClientTLS{Mode: dt.Mode, ClientCertificate: dt.ClientCertificate, PrivateKey: dt.PrivateKey,
			CACertificates: dt.CACertificates, SNI: dt.SNI, SubjectAltNames: dt.SubjectAltNames}
	}
	c, err := r.tlsLocked(d, set, t)
	if err != nil {
		return nil, err
	}
	up.TLS = c
	if lb := p.LoadBalancer; lb != nil && lb.Simple != "" {
		b, err := h2client.ParseBalancer(lb.Simple)
		if err != nil {
			return nil, err // validation refused it already
		}
		up.Balancer = &b
	}
	if od := p.OutlierDetection; od != nil {
		o := outlierOf(od)
		up.Outlier = &o
	}
	if cp := p.ConnectionPool; cp != nil && cp.HTTP != nil {
		// 0 is unset: Istio's default is no limit (2^32-1).
		up.MaxRequests = int(cp.HTTP.HTTP2MaxRequests)
		up.MaxRequestsPerConnection = int(cp.HTTP.MaxRequestsPerConnection)
		up.MaxRetries = int(cp.HTTP.MaxRetries)
	}
	// The key is the policy's content: an object applied again unchanged
	// keeps its clients.
	key, err := json.Marshal(struct {
		TLS     *destinationrule.ClientTLS
		LB      *destinationrule.LoadBalancer
		Outlier *destinationrule.OutlierDetection
		Pool    *destinationrule.ConnectionPool
	}{t, p.LoadBalancer, p.OutlierDetection, p.ConnectionPool})
	if err != nil {
		return nil, err
	}
	up.Key = string(key)
	return up, nil
}

// outlierOf maps an outlierDetection block as Istio hands it to Envoy
// (pilot/pkg/networking/core/cluster_traffic_policy.go applyOutlierDetection):
// consecutive5xxErrors unset is Envoy's default, 5, enforced; 0 turns it
// off; consecutiveGatewayErrors unset or 0 is off (Envoy enforces it only
// when set); interval, baseEjectionTime and maxEjectionPercent take
// Envoy's defaults when unset.
func outlierOf(od *destinationrule.OutlierDetection) h2client.Outlier {
	o := h2client.DefaultOutlier
	o.ConsecutiveErrors = 5
	if v := od.Consecutive5xxErrors; v != nil {
		o.ConsecutiveErrors = int(*v)
		if *v == 0 {
			o.ConsecutiveErrors = -1
		}
	}
	o.ConsecutiveGatewayErrors = -1
	if v := od.ConsecutiveGatewayErrors; v != nil && *v > 0 {
		o.ConsecutiveGatewayErrors = int(*v)
	}
	if d, err := time.ParseDuration(od.Interval); err == nil && od.Interval != "" {
		o.Interval = d
	}
	if d, err := time.ParseDuration(od.BaseEjectionTime); err == nil && od.BaseEjectionTime != "" {
		o.BaseEjectionTime = d
	}
	if m := od.MaxEjectionPercent; m != nil && *m > 0 {
		o.MaxEjectionPercent = int(*m)
	}
	return o
}

// tlsLocked is the client TLS configuration for mode and fields of t; nil
// for DISABLE.
func (r *Resolver) tlsLocked(d route.Destination, set string, t *destinationrule.ClientTLS) (*tls.Config, error) {
	mode := strings.ToUpper(t.Mode)
	if mode == "" || mode == config.TLSDisable {
		return nil, nil
	}
	l := r.loadLocked(r.filesOf(mode, t.CACertificates, t.ClientCertificate, t.PrivateKey))
	if l.err != nil {
		return nil, fmt.Errorf("upstream TLS of %s: %w", d, l.err)
	}
	u := certs.Upstream{Roots: l.roots, Cert: l.cert, ServerName: t.SNI, SANs: t.SubjectAltNames}
	host := d.Service + "." + d.Namespace + ".svc.cluster.local"
	switch mode {
	case config.TLSIstioMutual:
		// As Istio's sidecars (pilot/pkg/networking/core/cluster_tls.go
		// buildUpstreamClusterTLSContext): SNI the cluster name,
		// outbound|<port>|<subset>|<host> (model.BuildSubsetKey), ALPN
		// "istio", "h2" (pkg/model/proxy.go ALPNInMeshH2), and any
		// workload of the destination's namespace unless SANs are given
		// (Istio lists the service's accounts, which envgate, reading pod
		// metadata only, does not know).
		if u.ServerName == "" {
			port := portOf(d, set)
			if port == "" {
				port = r.defPort
			}
			u.ServerName = fmt.Sprintf("outbound|%s|%s|%s", port, d.Subset, host)
		}
		u.ALPN = []string{"istio", "h2"}
		if len(u.SANs) == 0 {
			u.SPIFFEPrefix = fmt.Sprintf("spiffe://%s/ns/%s/sa/", r.mesh.TrustDomain, d.Namespace)
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
	return u.Config(), nil
}

// filesOf are the (CA, certificate, key) files of a mode: the mesh's for
// ISTIO_MUTUAL.
func (r *Resolver) filesOf(mode, ca, cert, key string) [3]string {
	if strings.ToUpper(mode) == config.TLSIstioMutual {
		dir := r.mesh.CertDir
		return [3]string{filepath.Join(dir, MeshRootCert), filepath.Join(dir, MeshCertChain), filepath.Join(dir, MeshKey)}
	}
	return [3]string{ca, cert, key}
}

// loadLocked loads a file set once and queues its reloaders for Run. A
// set that failed is tried again at the next call.
func (r *Resolver) loadLocked(f [3]string) *loaded {
	if l, ok := r.files[f]; ok && l.err == nil {
		return l
	}
	l := &loaded{}
	if f[0] != "" {
		l.roots, l.err = certs.NewRoots(f[0], r.mesh.ReloadInterval, r.log)
	}
	if l.err == nil && f[1] != "" {
		l.cert, l.err = certs.NewFiles(f[1], f[2], r.mesh.ReloadInterval, r.log)
	}
	r.files[f] = l
	if l.err != nil {
		return l
	}
	if l.roots != nil {
		r.runners = append(r.runners, l.roots.Run)
	}
	if l.cert != nil {
		r.runners = append(r.runners, l.cert.Run)
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return l
}

// Describe says how connections to d through set are secured, for views.
func Describe(up *upstream.Policy) string {
	if up == nil || up.TLS == nil {
		return "DISABLE (h2c)"
	}
	return "TLS, SNI " + up.TLS.ServerName
}

// portOf is the destination's Service port number: the end of its set key
// when discovery knows the Service, else the port the route gave.
func portOf(d route.Destination, set string) string {
	set, _, _ = strings.Cut(set, "|") // a subset's key
	if i := strings.LastIndexByte(set, ':'); i >= 0 {
		return set[i+1:]
	}
	return d.Port
}
