// Package config is envgate's configuration: the YAML file's shape, its
// defaults, and the checks that run before anything starts.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/envgate/envgate/gateway/internal/route"
)

// Config is the whole configuration. Zero values are replaced by Defaults.
type Config struct {
	// Listeners the gateway serves gRPC on. A listener without TLS speaks
	// plaintext HTTP/2 (h2c).
	Listeners []Listener `yaml:"listeners"`
	// Routing says which header picks the environment and which service of the
	// environment receives the call.
	Routing Routing `yaml:"routing"`
	// Environments that may be routed to. A request naming any other value
	// gets UNIMPLEMENTED. When empty, the environments are the keys of the
	// static discovery, or with Kubernetes discovery the namespaces matching
	// discovery.kubernetes.namespaceSelector.
	Environments []string `yaml:"environments"`
	// Discovery is where endpoints come from.
	Discovery Discovery `yaml:"discovery"`
	// Admin serves /healthz/ready and /healthz/live over HTTP.
	Admin Admin `yaml:"admin"`
	// Limits of the gRPC server and of the upstream calls.
	Limits Limits `yaml:"limits"`
	// Upstream is how calls are spread over a destination's endpoints and
	// how failing ones are avoided, for every destination (the fields of
	// an Istio DestinationRule's trafficPolicy).
	Upstream Upstream `yaml:"upstream"`
	// DrainDelay is how long the gateway goes on serving after SIGTERM with
	// its readiness failing, so the load balancer and the endpoints stop
	// sending before it stops accepting.
	DrainDelay time.Duration `yaml:"drainDelay"`
	// ShutdownGrace bounds how long in-flight calls may run once the
	// gateway stops accepting (after the drain delay).
	ShutdownGrace time.Duration `yaml:"shutdownGrace"`
	// AccessLog writes one JSON line per call to stdout.
	AccessLog *bool `yaml:"accessLog"`
	// IstioMetrics, when set, adds Istio's standard request metrics
	// (istio_requests_total, ...) to /metrics.
	IstioMetrics *IstioMetrics `yaml:"istioMetrics"`
	// Tracing, when set, sends a span per call and request to an
	// OpenTelemetry collector.
	Tracing *Tracing `yaml:"tracing"`
}

// Tracing is the OTLP export of the gateway's spans.
type Tracing struct {
	// Endpoint is the collector's OTLP receiver, host:port.
	Endpoint string `yaml:"endpoint"`
	// Protocol is grpc (default; OTLP/gRPC, port 4317) or http (OTLP/HTTP,
	// 4318).
	Protocol string `yaml:"protocol"`
	// Insecure sends without TLS (a collector in the cluster).
	Insecure bool `yaml:"insecure"`
	// SamplingRatio is the share of requests that arrive without a
	// sampling decision that are traced; a request whose parent was
	// sampled (or not) keeps that decision. Default 0.01, Istio's 1%.
	SamplingRatio *float64 `yaml:"samplingRatio"`
	// ServiceName is the spans' service.name; default envgate.
	ServiceName string `yaml:"serviceName"`
}

// IstioMetrics are the labels of the gateway's own workload in Istio's
// metrics (the source of every request).
type IstioMetrics struct {
	// Workload is source_workload, source_app and source_canonical_service;
	// default "envgate".
	Workload string `yaml:"workload"`
	// Namespace is source_workload_namespace; default $POD_NAMESPACE.
	Namespace string `yaml:"namespace"`
	// Cluster is source_cluster; default "Kubernetes", Istio's default
	// cluster id.
	Cluster string `yaml:"cluster"`
}

// Listener is one address the gateway accepts connections on.
type Listener struct {
	Address string `yaml:"address"`
	TLS     *TLS   `yaml:"tls"`
	// SharedHTTP2 (default true) serves every HTTP/2 connection with
	// envgate's own HTTP/2 server, which hands gRPC calls to the same
	// handler (grpcfront): REST and gRPC may share any connection (a
	// load balancer that mixes them). false gives a connection whose
	// first request is gRPC to gRPC's own server, which answers REST on
	// it with 415; it is kept for comparison (docs/bench.md, "Run U").
	SharedHTTP2 *bool `yaml:"sharedHTTP2"`
}

// Shared says whether every HTTP/2 connection goes to envgate's own
// HTTP/2 server (SharedHTTP2, true unless set false).
func (l Listener) Shared() bool { return l.SharedHTTP2 == nil || *l.SharedHTTP2 }

// TLS names PEM certificate and key files (for example the edge2mesh
// kubernetes.io/tls Secret mounted as a volume), read again every
// ReloadInterval and swapped in when they change.
type TLS struct {
	CertFile       string        `yaml:"certFile"`
	KeyFile        string        `yaml:"keyFile"`
	ReloadInterval time.Duration `yaml:"reloadInterval"`
	// ACME gets certificates from an ACME CA instead of files, for a
	// gateway exposed directly (no load balancer in front).
	ACME *ACME `yaml:"acme"`
}

// ACME settings (golang.org/x/crypto/acme/autocert, TLS-ALPN-01 on the TLS
// listener itself).
type ACME struct {
	// Hosts is the allow-list of names to get certificates for.
	Hosts []string `yaml:"hosts"`
	Email string   `yaml:"email"`
	// DirectoryURL of the CA; empty means Let's Encrypt.
	DirectoryURL string `yaml:"directoryURL"`
	// CAFile is a PEM bundle trusted for the CA's own HTTPS API (for a
	// private CA such as Pebble).
	CAFile string `yaml:"caFile"`
	// Exactly one cache: a directory, or a Secret ("namespace/name") that
	// every replica shares.
	CacheDir    string `yaml:"cacheDir"`
	CacheSecret string `yaml:"cacheSecret"`
	// Kubeconfig for the Secret cache; empty: $KUBECONFIG, then in-cluster.
	Kubeconfig string `yaml:"kubeconfig"`
}

// Routing is the seed's VirtualService in one line per environment:
// header `env: envN` routes to app-service.envN on the grpc port.
type Routing struct {
	Header  string `yaml:"header"`
	Service string `yaml:"service"`
	Port    string `yaml:"port"`
	// VirtualServices, when set, routes by Istio VirtualService objects
	// instead of the one-header form.
	VirtualServices *VirtualServices `yaml:"virtualServices"`
	// Beyond Istio, both off by default so routing stays Istio's:
	// Baseline is an environment that takes the calls of an environment
	// with no service at all, saying so in the x-envgate-baseline response
	// header (sandbox routing);
	Baseline string `yaml:"baseline"`
	// DebugHeader adds x-envgate-upstream: <env> <endpoint> to responses.
	DebugHeader bool `yaml:"debugHeader"`
}

// VirtualServices names the VirtualService objects to route by.
type VirtualServices struct {
	// Gateway selects the objects bound to it, as "namespace/name"
	// (default common-istio-gateway in namespace, the seed's); spec.gateways
	// entries resolve as Istio resolves them.
	Gateway string `yaml:"gateway"`
	// Files hold VirtualService YAML (several documents each).
	Files []string `yaml:"files"`
	// Kubernetes watches the cluster's VirtualServices instead of files
	// (with discovery.kubernetes's kubeconfig).
	Kubernetes bool `yaml:"kubernetes"`
	// Namespace is given to objects without one (default "default").
	Namespace string `yaml:"namespace"`
	// ProxyNamespace is the namespace envgate runs in: objects must be
	// exported to it (spec.exportTo), as Istio requires for its ingress
	// gateway's pods (default: $POD_NAMESPACE, else the gateway's
	// namespace).
	ProxyNamespace string `yaml:"proxyNamespace"`
}

// Admin is the health listener (the seed's load balancer checks
// /healthz/ready on port 15021) and the debug listener (metrics, routes,
// explain), split as Istio splits them.
type Admin struct {
	// Address of the health listener; "-" turns it off.
	Address string `yaml:"address"`
	// DebugAddress serves /metrics, /routes and /explain; loopback by
	// default, since routes show endpoint addresses. For Prometheus in a
	// cluster, listen on the pod's address (":15000") and keep it off the
	// Service. "-" turns it off.
	DebugAddress string `yaml:"debugAddress"`
	// Pprof serves Go's profiles at /debug/pprof/ on the debug listener
	// (the -pprof flag sets it). Off by default: a CPU profile costs the
	// gateway while it runs, and a heap profile shows its memory.
	Pprof bool `yaml:"pprof"`
}

// Discovery configures the endpoint source: exactly one of Static,
// Kubernetes and DNS.
type Discovery struct {
	// Static lists endpoints ("host:port") per environment (its
	// routing.service), or per "service.namespace" for the other services
	// VirtualServices send to (the seeds' hellosvc beside app-service).
	Static map[string][]string `yaml:"static"`
	// Kubernetes follows the EndpointSlices of the service in each
	// environment namespace.
	Kubernetes *Kubernetes `yaml:"kubernetes"`
	// DNS resolves <service>.<env>.<suffix> periodically.
	DNS *DNS `yaml:"dns"`
}

// Kubernetes discovery settings.
type Kubernetes struct {
	// Kubeconfig file; empty means $KUBECONFIG, then the in-cluster
	// service account.
	Kubeconfig string `yaml:"kubeconfig"`
	// NamespaceSelector picks environment namespaces by label when
	// environments is empty (default envgate.io/environment=true).
	NamespaceSelector string `yaml:"namespaceSelector"`
	// Services are other services followed in every environment beside
	// routing.service, for VirtualService routes to them (the seeds'
	// hellosvc).
	Services []string `yaml:"services"`
}

// DNS discovery settings.
type DNS struct {
	// Suffix after <service>.<env>. (default svc.cluster.local).
	Suffix string `yaml:"suffix"`
	// Refresh is how often names are resolved again (default 5s).
	Refresh time.Duration `yaml:"refresh"`
}

// Upstream is the traffic policy of every destination.
type Upstream struct {
	// LoadBalancer is LEAST_REQUEST (the default, as Istio's), ROUND_ROBIN
	// or RANDOM.
	LoadBalancer string `yaml:"loadBalancer"`
	// MaxConnectionsPerEndpoint bounds the connections to one endpoint; a
	// further one is opened only when the open ones are at the backend's
	// SETTINGS_MAX_CONCURRENT_STREAMS (default 16).
	MaxConnectionsPerEndpoint int `yaml:"maxConnectionsPerEndpoint"`
	// KeepaliveTime is how long a backend connection with calls in flight
	// may be silent before it is pinged (default 5m, the shortest gRPC
	// servers accept by default; -1s turns it off), KeepaliveTimeout how
	// long the answer may take (default 20s).
	KeepaliveTime    time.Duration `yaml:"keepaliveTime"`
	KeepaliveTimeout time.Duration `yaml:"keepaliveTimeout"`
	// IdleTimeout closes the connections of a destination that saw no
	// call for this long; the next call opens them again (default 1h,
	// Envoy's upstream idle_timeout; -1s: never).
	IdleTimeout time.Duration `yaml:"idleTimeout"`
	// OutlierDetection ejects failing endpoints for a while.
	OutlierDetection OutlierDetection `yaml:"outlierDetection"`
	// TLS secures the connections to every destination, as a
	// DestinationRule's trafficPolicy.tls does (default DISABLE: h2c).
	TLS UpstreamTLS `yaml:"tls"`
	// Mesh is where the mesh's workload certificates are, for
	// ISTIO_MUTUAL.
	Mesh Mesh `yaml:"mesh"`
}

// UpstreamTLS is Istio's ClientTLSSettings, with the same field names.
type UpstreamTLS struct {
	// Mode is DISABLE (h2c), SIMPLE (TLS, the backend verified), MUTUAL
	// (and envgate's own certificate presented) or ISTIO_MUTUAL (the mesh's
	// workload certificates, the backend's SPIFFE identity verified).
	Mode string `yaml:"mode"`
	// CACertificates verify the backend (SIMPLE, MUTUAL; default: the
	// system's roots).
	CACertificates string `yaml:"caCertificates"`
	// ClientCertificate and PrivateKey are presented (MUTUAL).
	ClientCertificate string `yaml:"clientCertificate"`
	PrivateKey        string `yaml:"privateKey"`
	// SNI is sent to the backend (default: the destination's host name;
	// with ISTIO_MUTUAL, Istio's outbound_.<port>_.<subset>_.<host>).
	SNI string `yaml:"sni"`
	// SubjectAltNames, when set, are the identities one of which the
	// backend must present (default: the destination's host name; with
	// ISTIO_MUTUAL any workload of the destination's namespace,
	// spiffe://<trustDomain>/ns/<namespace>/sa/*).
	SubjectAltNames []string `yaml:"subjectAltNames"`
}

// Mesh locates the mesh's workload certificates, as an istio-proxy sidecar
// that intercepts nothing writes them with OUTPUT_CERTS (Istio's recipe for
// Prometheus: security/pkg/nodeagent/util/util.go OutputKeyCertToDir).
type Mesh struct {
	// CertDir holds cert-chain.pem, key.pem and root-cert.pem (default
	// /etc/istio-output-certs).
	CertDir string `yaml:"certDir"`
	// TrustDomain is the mesh's (default cluster.local).
	TrustDomain string `yaml:"trustDomain"`
	// ReloadInterval is how often the files are checked for a rotation
	// (default 10s; Istio rotates every 24 h by default).
	ReloadInterval time.Duration `yaml:"reloadInterval"`
}

// Upstream TLS modes, Istio's ClientTLSSettings.TLSmode.
const (
	TLSDisable     = "DISABLE"
	TLSSimple      = "SIMPLE"
	TLSMutual      = "MUTUAL"
	TLSIstioMutual = "ISTIO_MUTUAL"
)

// OutlierDetection is Istio's DestinationRule outlierDetection. Zero fields
// take envgate's defaults: 5 consecutive gateway errors (UNAVAILABLE,
// timeouts, resets, lost connections) eject an endpoint for 30 s times its
// ejection count, at most 10% of the endpoints (but always one).
type OutlierDetection struct {
	// ConsecutiveGatewayErrors and Consecutive5xxErrors: -1 turns one off;
	// Consecutive5xxErrors is off by default.
	ConsecutiveGatewayErrors int           `yaml:"consecutiveGatewayErrors"`
	Consecutive5xxErrors     int           `yaml:"consecutive5xxErrors"`
	Interval                 time.Duration `yaml:"interval"`
	BaseEjectionTime         time.Duration `yaml:"baseEjectionTime"`
	MaxEjectionPercent       int           `yaml:"maxEjectionPercent"`
}

// Limits are the server's and upstream calls' bounds.
type Limits struct {
	// MaxMessageBytes caps one message, received or sent, in either direction.
	MaxMessageBytes int `yaml:"maxMessageBytes"`
	// MaxConcurrentStreams per client connection (SETTINGS_MAX_CONCURRENT_STREAMS):
	// a stream past it is refused with REFUSED_STREAM, and clients queue
	// their calls until one ends.
	MaxConcurrentStreams uint32 `yaml:"maxConcurrentStreams"`
	// KeepaliveMinTime is the shortest interval between client pings the
	// gateway tolerates before it answers with GOAWAY ENHANCE_YOUR_CALM.
	KeepaliveMinTime time.Duration `yaml:"keepaliveMinTime"`
	// KeepaliveTime is how long a connection may be silent before the gateway
	// pings it, and KeepaliveTimeout how long it waits for the answer.
	KeepaliveTime    time.Duration `yaml:"keepaliveTime"`
	KeepaliveTimeout time.Duration `yaml:"keepaliveTimeout"`
	// MaxRequestHeadersBytes bounds a request's header list (names, values
	// and 32 bytes a field, as HTTP/2 counts it); it is advertised as
	// SETTINGS_MAX_HEADER_LIST_SIZE and a larger list resets the stream.
	MaxRequestHeadersBytes int `yaml:"maxRequestHeadersBytes"`
	// MaxConnections caps the client connections open at once, across
	// listeners; more are refused (h2c: with GOAWAY saying why).
	MaxConnections int `yaml:"maxConnections"`
	// IdleTimeout closes a client connection (GOAWAY) with no call in
	// flight for this long.
	IdleTimeout time.Duration `yaml:"idleTimeout"`
	// PrematureResets closes a client connection that resets this many
	// streams early, or more than half of its streams past that many
	// (Envoy's premature reset limit). -1 turns it off.
	PrematureResets int `yaml:"prematureResets"`
	// MaxConcurrentCalls bounds the gRPC calls and HTTP requests in flight
	// across listeners; one past it is refused at once (RESOURCE_EXHAUSTED,
	// HTTP 503, response flag OM) instead of slowing every call. 0: no
	// bound. Set it to what the gateway serves at the latency it must
	// keep: make bench's overload rows show the effect.
	MaxConcurrentCalls int `yaml:"maxConcurrentCalls"`
}

// Defaults. Message size is four times gRPC's default 4 MiB receive limit so
// that a backend, not the gateway, is the one to refuse a large message; the
// keepalive floor is far below gRPC's 5 minutes because load balancers and
// client libraries ping every 10-30 s. 100 streams a connection is what
// Envoy's edge proxy best practices set (HAProxy's default is 100, nginx's
// 128): under overload the calls past it wait in the client, in order,
// where with 1000 every call shared the gateway's CPU and most finished too
// late (docs/bench.md, "Overload").
const (
	DefaultHeader               = "env"
	DefaultService              = "app-service"
	DefaultPort                 = "grpc"
	DefaultMaxMessageBytes      = 16 << 20
	DefaultMaxConcurrentStreams = 100
	DefaultKeepaliveMinTime     = 5 * time.Second
	DefaultKeepaliveTime        = 2 * time.Minute
	DefaultKeepaliveTimeout     = 20 * time.Second
	// Envoy's max_request_headers_kb default.
	DefaultMaxRequestHeadersBytes = 60 << 10
	// Idle connections cost 40-50 KiB each: 1024 of them fit well inside
	// the manifests' 256 MiB with room for the calls.
	DefaultMaxConnections = 1024
	// Longer than Google's load balancer keeps an idle backend connection
	// (600 s), so the gateway is never the one to cut it; Envoy's default.
	DefaultIdleTimeout = time.Hour
	// Envoy's overload.premature_reset_total_stream_count default.
	DefaultPrematureResets   = 500
	DefaultShutdownGrace     = 30 * time.Second
	DefaultDrainDelay        = 5 * time.Second
	DefaultAdminAddress      = ":15021"
	DefaultDebugAddress      = "127.0.0.1:15000" // Envoy's admin port, loopback as in Istio's proxies
	DefaultNamespaceSelector = "envgate.io/environment=true"
	DefaultDNSSuffix         = "svc.cluster.local"
	DefaultDNSRefresh        = 5 * time.Second
	DefaultTLSReloadInterval = 10 * time.Second
)

// Load reads a YAML file, applies defaults and validates it.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML strictly (an unknown field is an error), applies
// defaults and validates.
func Parse(b []byte) (*Config, error) {
	var c Config
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, err // yaml.v3's syntax errors name the line already
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		// Checked first so that a mistake is reported in the file's terms,
		// not Go's, and every mistake at once.
		if errs := checkNode(doc.Content[0], reflect.TypeOf(c), ""); len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		if err := doc.Content[0].Decode(&c); err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Defaults fills every unset field.
func (c *Config) Defaults() {
	if t := c.Tracing; t != nil {
		if t.Protocol == "" {
			t.Protocol = "grpc"
		}
		if t.SamplingRatio == nil {
			r := 0.01
			t.SamplingRatio = &r
		}
		if t.ServiceName == "" {
			t.ServiceName = "envgate"
		}
	}
	if m := c.IstioMetrics; m != nil {
		if m.Workload == "" {
			m.Workload = "envgate"
		}
		if m.Cluster == "" {
			m.Cluster = "Kubernetes"
		}
	}
	if len(c.Listeners) == 0 {
		c.Listeners = []Listener{{Address: ":8080"}}
	}
	// Header names are case-insensitive; gRPC metadata keys are lower case.
	c.Routing.Header = strings.ToLower(c.Routing.Header)
	if c.Routing.Header == "" {
		c.Routing.Header = DefaultHeader
	}
	if c.Routing.Service == "" {
		c.Routing.Service = DefaultService
	}
	if c.Routing.Port == "" {
		c.Routing.Port = DefaultPort
	}
	if v := c.Routing.VirtualServices; v != nil {
		if v.Namespace == "" {
			v.Namespace = "default"
		}
		if v.Gateway == "" {
			v.Gateway = "common-istio-gateway"
		}
		if !strings.Contains(v.Gateway, "/") {
			// A name alone is in the objects' default namespace.
			v.Gateway = v.Namespace + "/" + v.Gateway
		}
		if v.ProxyNamespace == "" {
			v.ProxyNamespace = os.Getenv("POD_NAMESPACE")
		}
		if v.ProxyNamespace == "" {
			v.ProxyNamespace, _, _ = strings.Cut(v.Gateway, "/")
		}
	}
	if len(c.Environments) == 0 {
		for key := range c.Discovery.Static {
			if _, env := staticKey(key); !slices.Contains(c.Environments, env) {
				c.Environments = append(c.Environments, env)
			}
		}
		slices.Sort(c.Environments) // a stable order for the routing table and its views
	}
	for _, l := range c.Listeners {
		if l.TLS != nil && l.TLS.ReloadInterval == 0 {
			l.TLS.ReloadInterval = DefaultTLSReloadInterval
		}
	}
	if c.Admin.Address == "" {
		c.Admin.Address = DefaultAdminAddress
	}
	if c.Admin.DebugAddress == "" {
		c.Admin.DebugAddress = DefaultDebugAddress
	}
	if k := c.Discovery.Kubernetes; k != nil && k.NamespaceSelector == "" && len(c.Environments) == 0 {
		k.NamespaceSelector = DefaultNamespaceSelector
	}
	if d := c.Discovery.DNS; d != nil {
		if d.Suffix == "" {
			d.Suffix = DefaultDNSSuffix
		}
		if d.Refresh == 0 {
			d.Refresh = DefaultDNSRefresh
		}
	}
	l := &c.Limits
	if l.MaxMessageBytes == 0 {
		l.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if l.KeepaliveMinTime == 0 {
		l.KeepaliveMinTime = DefaultKeepaliveMinTime
	}
	if l.KeepaliveTime == 0 {
		l.KeepaliveTime = DefaultKeepaliveTime
	}
	if l.KeepaliveTimeout == 0 {
		l.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if l.MaxRequestHeadersBytes == 0 {
		l.MaxRequestHeadersBytes = DefaultMaxRequestHeadersBytes
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.PrematureResets == 0 {
		l.PrematureResets = DefaultPrematureResets
	}
	if c.Upstream.LoadBalancer == "" {
		c.Upstream.LoadBalancer = "LEAST_REQUEST"
	}
	if c.Upstream.IdleTimeout == 0 {
		c.Upstream.IdleTimeout = time.Hour
	}
	if t := &c.Upstream.TLS; t.Mode == "" {
		t.Mode = TLSDisable
	} else {
		t.Mode = strings.ToUpper(t.Mode)
	}
	if m := &c.Upstream.Mesh; m.CertDir == "" {
		m.CertDir = "/etc/istio-output-certs"
	}
	if m := &c.Upstream.Mesh; m.TrustDomain == "" {
		m.TrustDomain = "cluster.local"
	}
	if m := &c.Upstream.Mesh; m.ReloadInterval == 0 {
		m.ReloadInterval = 10 * time.Second
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.DrainDelay == 0 {
		c.DrainDelay = DefaultDrainDelay
	}
	if c.AccessLog == nil {
		on := true
		c.AccessLog = &on
	}
}

// dnsLabel is a Kubernetes namespace name (RFC 1123 label). Environment names
// must be one, so a header value can never name anything else.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// metadataKey is a lower-case gRPC metadata key.
var metadataKey = regexp.MustCompile(`^[a-z0-9_.-]+$`)

// Validate reports every problem found, joined.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Listeners) == 0 {
		errs = append(errs, errors.New("listeners: at least one is needed"))
	}
	if t := c.Tracing; t != nil {
		if err := checkAddress(t.Endpoint); err != nil || t.Endpoint == "" {
			errs = append(errs, fmt.Errorf("tracing.endpoint %q: the collector's host:port is needed", t.Endpoint))
		}
		if t.Protocol != "grpc" && t.Protocol != "http" {
			errs = append(errs, fmt.Errorf("tracing.protocol %q: grpc or http", t.Protocol))
		}
		if r := t.SamplingRatio; r != nil && (*r < 0 || *r > 1) {
			errs = append(errs, fmt.Errorf("tracing.samplingRatio %v: between 0 and 1", *r))
		}
	}
	bound := map[string]string{} // address -> the key that binds it
	bind := func(key, addr string) {
		if err := checkAddress(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", key, addr, err))
			return
		}
		if _, port, _ := net.SplitHostPort(addr); port == "0" {
			return // a free port each
		}
		if prev, ok := bound[addr]; ok {
			errs = append(errs, fmt.Errorf("%s %q: already bound by %s", key, addr, prev))
			return
		}
		bound[addr] = key
	}
	for i, l := range c.Listeners {
		bind(fmt.Sprintf("listeners[%d].address", i), l.Address)
		if t := l.TLS; t != nil && t.ACME == nil && (t.CertFile == "" || t.KeyFile == "") {
			errs = append(errs, fmt.Errorf("listeners[%d].tls: certFile and keyFile are both required", i))
		}
		if t := l.TLS; t != nil && t.ACME != nil {
			a := t.ACME
			if t.CertFile != "" || t.KeyFile != "" {
				errs = append(errs, fmt.Errorf("listeners[%d].tls: certificate files and acme are exclusive", i))
			}
			if len(a.Hosts) == 0 {
				errs = append(errs, fmt.Errorf("listeners[%d].tls.acme.hosts: at least one host is needed", i))
			}
			if (a.CacheDir == "") == (a.CacheSecret == "") {
				errs = append(errs, fmt.Errorf("listeners[%d].tls.acme: exactly one of cacheDir and cacheSecret", i))
			}
			if ns, name, ok := strings.Cut(a.CacheSecret, "/"); a.CacheSecret != "" && (!ok || !dnsLabel.MatchString(ns) || name == "") {
				errs = append(errs, fmt.Errorf("listeners[%d].tls.acme.cacheSecret %q: want namespace/name", i, a.CacheSecret))
			}
		}
		if l.TLS != nil && l.TLS.ReloadInterval < 0 {
			errs = append(errs, fmt.Errorf("listeners[%d].tls.reloadInterval: must not be negative", i))
		}
	}
	if !metadataKey.MatchString(c.Routing.Header) {
		errs = append(errs, fmt.Errorf("routing.header %q: must be a lower-case gRPC metadata key", c.Routing.Header))
	}
	if c.Routing.Baseline != "" && !dnsLabel.MatchString(c.Routing.Baseline) {
		errs = append(errs, fmt.Errorf("routing.baseline %q: must be a namespace name", c.Routing.Baseline))
	} else if c.Routing.Baseline != "" && len(c.Environments) > 0 && !slices.Contains(c.Environments, c.Routing.Baseline) {
		errs = append(errs, fmt.Errorf("routing.baseline %q: not one of the environments %v", c.Routing.Baseline, c.Environments))
	}
	if !dnsLabel.MatchString(c.Routing.Service) {
		errs = append(errs, fmt.Errorf("routing.service %q: must be a Kubernetes Service name", c.Routing.Service))
	}
	sources := 0
	for _, set := range []bool{c.Discovery.Static != nil, c.Discovery.Kubernetes != nil, c.Discovery.DNS != nil} {
		if set {
			sources++
		}
	}
	if sources > 1 {
		errs = append(errs, errors.New("discovery: static, kubernetes and dns are exclusive"))
	}
	if sources == 0 {
		errs = append(errs, errors.New("discovery: missing: say where environments' endpoints come from (static: {env1: [host:port]}, kubernetes: {} or dns: {})"))
	}
	byLabel := c.Discovery.Kubernetes != nil && len(c.Environments) == 0
	byVS := c.Routing.VirtualServices != nil
	if byVS && (len(c.Routing.VirtualServices.Files) == 0) == !c.Routing.VirtualServices.Kubernetes {
		errs = append(errs, errors.New("routing.virtualServices: either files or kubernetes: true"))
	}
	if byVS && c.Routing.VirtualServices.Kubernetes && c.Discovery.Kubernetes == nil {
		errs = append(errs, errors.New("routing.virtualServices.kubernetes needs discovery.kubernetes"))
	}
	if len(c.Environments) == 0 && !byLabel && !byVS && sources > 0 {
		errs = append(errs, errors.New("environments: none configured, nothing could be routed"))
	}
	if byLabel && !byVS && strings.TrimSpace(c.Discovery.Kubernetes.NamespaceSelector) == "" {
		errs = append(errs, errors.New("discovery.kubernetes.namespaceSelector: empty with no environments listed"))
	}
	for _, a := range [][2]string{{"admin.address", c.Admin.Address}, {"admin.debugAddress", c.Admin.DebugAddress}} {
		if a[1] != "-" {
			bind(a[0], a[1])
		}
	}
	if d := c.Discovery.DNS; d != nil && d.Refresh < 0 {
		errs = append(errs, errors.New("discovery.dns.refresh: must not be negative"))
	}
	seen := map[string]bool{}
	for _, env := range c.Environments {
		if !dnsLabel.MatchString(env) {
			errs = append(errs, fmt.Errorf("environments: %q is not a namespace name (RFC 1123 label)", env))
		}
		if seen[env] {
			errs = append(errs, fmt.Errorf("environments: %q listed twice", env))
		}
		seen[env] = true
	}
	if k := c.Discovery.Kubernetes; k != nil {
		for _, svc := range k.Services {
			if !dnsLabel.MatchString(svc) || svc == c.Routing.Service {
				errs = append(errs, fmt.Errorf("discovery.kubernetes.services: %q is not a service name (RFC 1123 label) other than routing.service", svc))
			}
		}
		if len(k.Services) > 0 && c.Routing.VirtualServices == nil {
			errs = append(errs, errors.New("discovery.kubernetes.services: other services are reached only through routing.virtualServices"))
		}
	}
	if c.Discovery.Static != nil {
		has := map[string]bool{}
		for key, addrs := range c.Discovery.Static {
			if _, env := staticKey(key); len(addrs) > 0 {
				has[env] = true
			}
		}
		for _, env := range c.Environments {
			if !has[env] {
				errs = append(errs, fmt.Errorf("discovery.static: environment %q has no endpoints (%s: [host:port])", env, env))
			}
		}
	}
	for key, addrs := range c.Discovery.Static {
		svc, env := staticKey(key)
		if !seen[env] {
			errs = append(errs, fmt.Errorf("discovery.static.%s: not in environments", key))
		}
		if svc != "" && c.Routing.VirtualServices == nil {
			errs = append(errs, fmt.Errorf("discovery.static.%s: a service other than routing.service is reached only through routing.virtualServices", key))
		}
		if svc != "" && !dnsLabel.MatchString(svc) {
			errs = append(errs, fmt.Errorf("discovery.static.%s: %q is not a service name (RFC 1123 label)", key, svc))
		}
		for _, a := range addrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				errs = append(errs, fmt.Errorf("discovery.static.%s: endpoint %q: %w", key, a, err))
			}
		}
	}
	switch strings.ToUpper(c.Upstream.LoadBalancer) {
	case "LEAST_REQUEST", "ROUND_ROBIN", "RANDOM":
	default:
		errs = append(errs, fmt.Errorf("upstream.loadBalancer %q: want LEAST_REQUEST, ROUND_ROBIN or RANDOM", c.Upstream.LoadBalancer))
	}
	if u := c.Upstream; u.MaxConnectionsPerEndpoint < 0 || u.KeepaliveTimeout < 0 {
		errs = append(errs, errors.New("upstream: maxConnectionsPerEndpoint and keepaliveTimeout must not be negative"))
	}
	if o := c.Upstream.OutlierDetection; o.ConsecutiveGatewayErrors < -1 || o.Consecutive5xxErrors < -1 || o.Interval < 0 || o.BaseEjectionTime < 0 || o.MaxEjectionPercent < 0 || o.MaxEjectionPercent > 100 {
		errs = append(errs, errors.New("upstream.outlierDetection: counts must be -1 (off) or more, times not negative, maxEjectionPercent 0-100"))
	}
	errs = append(errs, c.Upstream.TLS.validate()...)
	if c.Limits.MaxMessageBytes < 0 {
		errs = append(errs, errors.New("limits.maxMessageBytes: must be positive"))
	}
	if c.Limits.MaxRequestHeadersBytes < 0 || c.Limits.MaxConnections < 0 || c.Limits.PrematureResets < -1 || c.Limits.MaxConcurrentCalls < 0 {
		errs = append(errs, errors.New("limits: maxRequestHeadersBytes and maxConnections must be positive, maxConcurrentCalls 0 (no bound) or more, prematureResets positive or -1"))
	}
	if c.Limits.KeepaliveMinTime < 0 || c.Limits.IdleTimeout < 0 || c.Limits.KeepaliveTime < 0 || c.Limits.KeepaliveTimeout < 0 || c.ShutdownGrace < 0 || c.DrainDelay < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	return errors.Join(errs...)
}

// checkAddress accepts host:port with a port number 0-65535 (0: any free
// port).
func checkAddress(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// Destination is where requests for env go.
func (c *Config) Destination(env string) route.Destination {
	return route.Destination{Namespace: env, Service: c.Routing.Service, Port: c.Routing.Port}
}

// Table builds the routing table of the configured environments.
func (c *Config) Table() (*route.Table, error) { return c.TableFor(c.Environments) }

// TableFor builds a routing table with one exact-match rule per environment.
func (c *Config) TableFor(envs []string) (*route.Table, error) {
	rules := make([]route.EnvRule, 0, len(envs))
	for _, env := range envs {
		rules = append(rules, route.EnvRule{Value: env, Destination: c.Destination(env)})
	}
	return route.NewEnvTable(c.Routing.Header, rules)
}

// StaticEndpoints returns the static endpoints keyed as discovery names them.
func (c *Config) StaticEndpoints() map[string][]string {
	out := make(map[string][]string, len(c.Discovery.Static))
	for key, addrs := range c.Discovery.Static {
		if svc, env := staticKey(key); svc != "" {
			out[route.Destination{Service: svc, Namespace: env}.Key()] = addrs
		} else {
			out[c.Destination(env).Key()] = addrs
		}
	}
	return out
}

// staticKey splits a discovery.static key: "env1" is routing.service in
// env1 (service ""), "hellosvc.env1" the service hellosvc in env1.
func staticKey(key string) (service, namespace string) {
	if svc, ns, ok := strings.Cut(key, "."); ok {
		return svc, ns
	}
	return "", key
}

// validate checks the settings: MUTUAL needs its certificate and key, as
// Istio's pkg/config/validation/agent/validation.go ValidateTLS says; the
// rest refuses fields a mode would ignore, where Istio ignores them
// silently.
func (t UpstreamTLS) validate() []error {
	var errs []error
	switch t.Mode {
	case TLSDisable, TLSSimple:
		if t.ClientCertificate != "" || t.PrivateKey != "" {
			errs = append(errs, fmt.Errorf("upstream.tls: clientCertificate and privateKey are for MUTUAL, not %s", t.Mode))
		}
	case TLSMutual:
		if t.ClientCertificate == "" {
			errs = append(errs, errors.New("upstream.tls.clientCertificate: client certificate required for mutual tls"))
		}
		if t.PrivateKey == "" {
			errs = append(errs, errors.New("upstream.tls.privateKey: private key required for mutual tls"))
		}
	case TLSIstioMutual:
		if t.ClientCertificate != "" || t.PrivateKey != "" || t.CACertificates != "" {
			errs = append(errs, errors.New("upstream.tls: ISTIO_MUTUAL uses the mesh's certificates (upstream.mesh.certDir); clientCertificate, privateKey and caCertificates must be empty"))
		}
	default:
		errs = append(errs, fmt.Errorf("upstream.tls.mode %q: want DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL", t.Mode))
	}
	if t.Mode == TLSDisable && (t.CACertificates != "" || t.SNI != "" || len(t.SubjectAltNames) > 0) {
		errs = append(errs, errors.New("upstream.tls: caCertificates, sni and subjectAltNames need a mode other than DISABLE"))
	}
	return errs
}
