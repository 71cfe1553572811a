package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/envgate/envgate/gateway/internal/admin"
	"github.com/envgate/envgate/gateway/internal/certs"
	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/destinationrule"
	"github.com/envgate/envgate/gateway/internal/discovery"
	"github.com/envgate/envgate/gateway/internal/edge"
	"github.com/envgate/envgate/gateway/internal/grpcfront"
	"github.com/envgate/envgate/gateway/internal/h2client"
	"github.com/envgate/envgate/gateway/internal/h2front"
	"github.com/envgate/envgate/gateway/internal/httpproxy"
	"github.com/envgate/envgate/gateway/internal/istiometrics"
	"github.com/envgate/envgate/gateway/internal/metrics"
	"github.com/envgate/envgate/gateway/internal/overload"
	"github.com/envgate/envgate/gateway/internal/policy"
	"github.com/envgate/envgate/gateway/internal/proxy"
	"github.com/envgate/envgate/gateway/internal/rawio"
	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/routing"
	"github.com/envgate/envgate/gateway/internal/sniff"
	"github.com/envgate/envgate/gateway/internal/tracing"
	"github.com/envgate/envgate/gateway/internal/upstream"
	"github.com/envgate/envgate/gateway/internal/virtualservice"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// gateway is one running envgate: its listeners, servers, routes and
// upstream connections.
type gateway struct {
	// cfg is the configuration the gateway started with: the fields that
	// take effect only at a restart are read from it.
	cfg *config.Config
	// cur is the configuration in force: cfg with the live fields of the
	// latest valid reload (see config.Reloaded). Read it with config().
	cur atomic.Pointer[config.Config]
	// tableMu serialises the writers of the routing table: a reload and
	// Kubernetes discovery's change of environments. Readers (calls) do
	// not take it. No network I/O is done under it.
	tableMu  sync.Mutex
	reloaded atomic.Pointer[reloadStatus] // the latest reload, for /routes
	tracing  *tracing.Tracing             // nil: off
	// calls bounds the calls and requests in flight (limits.maxConcurrentCalls); nil: no bound.
	calls   *overload.Concurrency
	log     *slog.Logger
	store   *discovery.Store
	pool    *upstream.Pool
	routing *routing.State // the live table and the VirtualService merge it came from
	// envs are the environments discovery follows: the configured ones, or
	// with VirtualService files the namespaces the rules send to.
	envs []string
	// background runs beside the servers: discovery sources, certificate
	// watchers. An error from one stops the gateway.
	background []func(context.Context) error
	draining   atomic.Bool

	policy  *policy.Resolver // how each destination's client reaches it
	vsReady func() bool      // the live VirtualService and DestinationRule watches have synced
	health  *health.Server   // grpc.health.v1 for the gateway itself
	metrics *metrics.Metrics

	listeners []*sniff.Mux          // each listener's connections, to the server of their protocol
	conns     *edge.Limiter         // the client connections of every listener
	servers   []*grpc.Server        // gRPC, per listener
	https     []*http.Server        // HTTP/1.1 and REST over HTTP/2, per listener
	h1s       []*httpproxy.H1Server // the HTTP/1.1 fast path, per listener
	h2s       []*h2front.Server     // HTTP/2 connections whose first request is not gRPC, per listener
	front     *httpproxy.Proxy      // the HTTP front, shared by the listeners
	admin     *http.Server          // health: the load balancer's check
	adminLis  net.Listener
	debug     *http.Server // metrics, routes, explain
	debugLis  net.Listener
}

// newGateway builds everything and binds the listeners, so that addresses
// are known (port 0 included) before Run. dial, when not nil, opens the
// upstream connections (tests map pod addresses with it).
func newGateway(cfg *config.Config, log *slog.Logger, dial func(context.Context, string) (net.Conn, error)) (*gateway, error) {
	table, vs, err := buildTable(cfg)
	if err != nil {
		return nil, err
	}
	envs := cfg.Environments
	if vs != nil && !cfg.Routing.VirtualServices.Kubernetes {
		routing.Log(log, vs)
		// Discovery follows the namespaces the rules send to.
		envs = namespacesOf(table)
	}
	dial = rawDial(dial)
	g := &gateway{cfg: cfg, log: log, store: discovery.NewStore(), routing: routing.New(table, vs, log), envs: envs}
	g.cur.Store(cfg)
	if v := cfg.Routing.VirtualServices; v != nil && !v.Kubernetes {
		drs, err := destinationRuleFiles(v)
		if err != nil {
			return nil, err
		}
		g.routing.ApplyDestinationRules(drs)
	}
	if err := g.setupDiscovery(); err != nil {
		return nil, err
	}

	maxMsg := cfg.Limits.MaxMessageBytes
	u := cfg.Upstream
	balancer, err := h2client.ParseBalancer(u.LoadBalancer)
	if err != nil {
		return nil, err // Validate refused it already
	}
	if g.policy, err = policy.NewResolver(u.TLS, u.Mesh, cfg.Routing.Port, log); err != nil {
		return nil, err
	}
	g.background = append(g.background, g.policy.Run)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g.metrics = metrics.New(reg)
	ex := exchanges{metrics: g.metrics}
	if m := cfg.IstioMetrics; m != nil {
		ns := m.Namespace
		if ns == "" {
			ns = os.Getenv("POD_NAMESPACE")
		}
		ex.istio = istiometrics.New(reg, istiometrics.Source{Workload: m.Workload, Namespace: ns, Cluster: m.Cluster})
	}
	od := u.OutlierDetection
	g.pool = upstream.NewPool(g.store, log, h2client.Options{
		Dial:                dial,
		OnDial:              g.metrics.UpstreamDialed("grpc"),
		OnEject:             g.metrics.Ejected,
		UserAgent:           "envgate/" + version,
		MaxRecvMsgSize:      maxMsg,
		MaxSendMsgSize:      maxMsg,
		Balancer:            balancer,
		MaxConnsPerEndpoint: u.MaxConnectionsPerEndpoint,
		KeepaliveTime:       u.KeepaliveTime,
		KeepaliveTimeout:    u.KeepaliveTimeout,
		Outlier: h2client.Outlier{
			ConsecutiveGatewayErrors: od.ConsecutiveGatewayErrors,
			ConsecutiveErrors:        od.Consecutive5xxErrors,
			Interval:                 od.Interval,
			BaseEjectionTime:         od.BaseEjectionTime,
			MaxEjectionPercent:       od.MaxEjectionPercent,
		},
		// Responses count toward the overload manager's readings as
		// requests do (g.conns is set below, before any call).
		OnRead: func(n int) { g.conns.CountRead(n) },
	})
	if u.IdleTimeout > 0 {
		g.pool.CloseIdle(u.IdleTimeout)
	}
	var accessLog *slog.Logger
	if *cfg.AccessLog {
		// The access log is a record of calls, not a diagnostic:
		// -log-level does not silence it (Envoy's access log is separate
		// from its log level too).
		accessLog = slog.New(everyRecord{log.Handler()})
	}
	metrics.RegisterState(reg, g.state)
	if vs != nil {
		metrics.RegisterVirtualServices(reg, g.vsState)
	}
	px := proxy.New(proxy.NewDirector(g.routing.Table, poolUpstreams{g.pool, g.target}, rand.Float64, g.baseline()), accessLog, cfg.Routing.Header, g.metrics)
	px.SetDebugHeader(cfg.Routing.DebugHeader)
	px.SetMaxMessage(cfg.Limits.MaxMessageBytes)
	px.SetExchanges(ex)
	// Both fronts trace with the one tracer, or neither does (nil).
	var (
		tracer trace.Tracer
		prop   propagation.TextMapPropagator
	)
	if t := cfg.Tracing; t != nil {
		if g.tracing, err = tracing.New(context.Background(), tracing.Options{
			Endpoint: t.Endpoint, Protocol: t.Protocol, Insecure: t.Insecure,
			SamplingRatio: *t.SamplingRatio, ServiceName: t.ServiceName, Version: version,
		}); err != nil {
			return nil, err
		}
		tracer, prop = g.tracing.Tracer, g.tracing.Propagator
		px.SetTracing(tracer, prop)
	}
	g.health = health.NewServer()
	g.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING) // until discovery syncs
	handler := (&localHealth{routing: g.routing, srv: g.health, next: px.Handler}).handler

	g.conns = edge.NewLimiter(edge.Options{
		MaxConns:        cfg.Limits.MaxConnections,
		PrematureResets: cfg.Limits.PrematureResets, // -1: off
		Log:             log,
		OnRefused:       g.metrics.ConnectionRefused,
		OnResetClose:    g.metrics.ConnectionClosedForResets,
	})
	// The overload manager works to the runtime's memory limit (GOMEMLIMIT,
	// from the container's limit), shedding from the client connections.
	ol := overload.New(overload.Options{Log: log, OnShed: g.metrics.ConnectionClosedForOverload}, g.conns)
	if ol.Limit() > 0 {
		px.SetAdmission(ol)
		g.conns.OnRead(ol.Kick)
		g.background = append(g.background, ol.Run)
		log.Info("overload manager on", "memory_limit_mib", ol.Limit()>>20,
			"refuse_new_calls_at_mib", int64(overload.RefuseAt*float64(ol.Limit()))>>20,
			"close_largest_connection_at_mib", int64(overload.ShedAt*float64(ol.Limit()))>>20)
	}
	var limiter httpproxy.Limiter
	if g.calls = overload.NewConcurrency(cfg.Limits.MaxConcurrentCalls); g.calls != nil {
		px.SetLimiter(g.calls)
		limiter = g.calls
	}
	g.front = httpproxy.New(g.routing.Table, httpUpstreams{g: g, next: new(atomic.Uint64)}, httpproxy.Options{
		Limiter:                limiter,
		EnvHeader:              cfg.Routing.Header,
		AccessLog:              accessLog,
		Log:                    log,
		Observer:               g.metrics,
		Pick:                   rand.Float64,
		Fallback:               g.baseline(),
		Dial:                   httpDial(dial),
		OnDial:                 g.metrics.UpstreamDialed("http"),
		Exchanges:              ex,
		Tracer:                 tracer,
		Propagator:             prop,
		DebugHeader:            cfg.Routing.DebugHeader,
		MaxResponseHeaderBytes: cfg.Limits.MaxRequestHeadersBytes,
		IdleConnTimeout:        u.IdleTimeout,
	})
	// gRPC calls on envgate's HTTP/2 server reach the same handler as on
	// gRPC's, with its codec and limits.
	calls := grpcfront.New(grpcfront.Options{
		Handler: handler, Codec: proxy.ServerCodec(),
		MaxRecvMessage: cfg.Limits.MaxMessageBytes, MaxSendMessage: cfg.Limits.MaxMessageBytes,
	})
	for _, l := range cfg.Listeners {
		var tlsConf *tls.Config
		if l.TLS != nil {
			p, err := g.certProvider(l.TLS)
			if err != nil {
				g.closeListeners()
				return nil, fmt.Errorf("listener %s: %w", l.Address, err)
			}
			tlsConf = serverTLS(p)
		}
		lis, err := net.Listen("tcp", l.Address)
		if err != nil {
			g.closeListeners()
			return nil, fmt.Errorf("listen: %w", err)
		}
		lis = rawio.Listener(lis)
		mux := sniff.NewMux(g.conns.Listen(lis, l.TLS == nil), sniffOptions(cfg, l, tlsConf), log)
		srv := newServer(cfg, sniffedCreds{}, handler, l.TLS != nil)
		g.listeners = append(g.listeners, mux)
		g.servers = append(g.servers, srv)
		g.https = append(g.https, newHTTPServer(cfg, srv, g.front, log))
		g.h2s = append(g.h2s, newHTTP2Server(cfg, srv, g.front, g.front.Relay, calls.Serve, log))
		g.h1s = append(g.h1s, g.front.NewH1Server(httpproxy.H1Options{
			Handoff:        mux.Handoff,
			IdleTimeout:    cfg.Limits.IdleTimeout,
			HeaderTimeout:  sniffTimeout,
			MaxHeaderBytes: cfg.Limits.MaxRequestHeadersBytes,
			TLS:            connTLS,
		}))
	}
	if g.admin, g.adminLis, err = listenAdmin(cfg.Admin.Address, admin.Health(g.ready)); err != nil {
		g.closeListeners()
		return nil, fmt.Errorf("admin listen: %w", err)
	}
	debug := admin.Debug{
		Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Routes:  g.routeView,
		Explain: g.explain,
		Pprof:   cfg.Admin.Pprof,
	}
	if g.debug, g.debugLis, err = listenAdmin(cfg.Admin.DebugAddress, debug.Handler()); err != nil {
		g.closeListeners()
		return nil, fmt.Errorf("debug listen: %w", err)
	}
	return g, nil
}

// upstreamDialer is the dialer of upstream connections when tests give
// none: connecting takes at most Istio's default MeshConfig.connectTimeout
// (10 s), as the HTTP front's own dialer did.
var upstreamDialer = net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}

// rawDial is dial (upstreamDialer when nil) with its connections read and
// written by raw system calls (package rawio), as the listeners' are.
func rawDial(dial func(context.Context, string) (net.Conn, error)) func(context.Context, string) (net.Conn, error) {
	if dial == nil {
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			return upstreamDialer.DialContext(ctx, "tcp", addr)
		}
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := dial(ctx, addr)
		if err != nil {
			return nil, err
		}
		return rawio.Wrap(c), nil
	}
}

// listenAdmin binds an admin-side listener serving h, with bounds on what
// a client can hold there (small requests, answered at once); "-" binds
// nothing.
func listenAdmin(addr string, h http.Handler) (*http.Server, net.Listener, error) {
	if addr == "-" {
		return nil, nil, nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}, lis, nil
}

// setupDiscovery chooses the endpoint source.
func (g *gateway) setupDiscovery() error {
	cfg := g.cfg
	switch {
	case cfg.Discovery.Kubernetes != nil:
		rc, err := kubeConfig(cfg.Discovery.Kubernetes.Kubeconfig)
		if err != nil {
			return err
		}
		rc.UserAgent = "envgate/" + version
		src, err := discovery.NewKubernetes(rc, g.store, discovery.KubernetesConfig{
			Service:           cfg.Routing.Service,
			Services:          cfg.Discovery.Kubernetes.Services,
			Namespaces:        g.envs,
			NamespaceSelector: cfg.Discovery.Kubernetes.NamespaceSelector,
			Key:               func(ns string) string { return cfg.Destination(ns).Key() },
			OnEnvironments:    g.onEnvironments(),
		}, g.log)
		if err != nil {
			return fmt.Errorf("kubernetes discovery: %w", err)
		}
		g.background = append(g.background, src.Run)
		if v := cfg.Routing.VirtualServices; v != nil && v.Kubernetes {
			dyn, err := dynamic.NewForConfig(rc)
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			w := &virtualservice.Watcher{Client: dyn, Options: vsOptions(cfg), OnChange: g.routing.ApplyVirtualServices, Log: g.log}
			drw := &destinationrule.Watcher{Client: dyn, ProxyNamespace: v.ProxyNamespace, OnChange: g.routing.ApplyDestinationRules, Log: g.log}
			g.vsReady = func() bool { return w.Synced() && drw.Synced() }
			g.background = append(g.background, w.Run, drw.Run)
		}
	case cfg.Discovery.DNS != nil:
		d := cfg.Discovery.DNS
		src := discovery.NewDNS(g.store, discovery.DNSConfig{
			Names: dnsNames(cfg, g.envs, d.Suffix),
			Port:  cfg.Routing.Port,
			Every: d.Refresh,
		}, net.DefaultResolver, g.log)
		g.background = append(g.background, src.Run)
	default:
		discovery.Static(g.store, cfg.StaticEndpoints())
	}
	return nil
}

// dnsNames maps each environment's store key to the name to resolve.
func dnsNames(cfg *config.Config, envs []string, suffix string) map[string]string {
	names := make(map[string]string, len(envs))
	for _, env := range envs {
		names[cfg.Destination(env).Key()] = cfg.Routing.Service + "." + env + "." + suffix
	}
	return names
}

// exchanges keeps what each finished call or request tells: envgate's
// retry count, and Istio's metrics when they are on.
type exchanges struct {
	metrics *metrics.Metrics
	istio   *istiometrics.Metrics // nil: off
}

func (x exchanges) Exchange(e istiometrics.Exchange) {
	x.metrics.Retried(e.Env, e.Retries)
	if x.istio != nil {
		x.istio.Record(e)
	}
}

// onEnvironments is what Kubernetes discovery calls when the environment
// namespaces change: in the one-header form the table follows them; with
// VirtualServices the rules decide, and nothing changes.
func (g *gateway) onEnvironments() func([]string) {
	if g.routing.VirtualServiceMode() {
		return nil
	}
	return g.setEnvironments
}

// baseline is the fallback of sandbox routing: a destination whose service
// discovery does not know goes to the same service in the baseline
// environment. The baseline is read per call: a reload may set or clear it.
func (g *gateway) baseline() func(route.Destination) (route.Destination, bool) {
	return func(d route.Destination) (route.Destination, bool) {
		b := g.config().Routing.Baseline
		if b == "" {
			return d, false
		}
		if g.store.Exists(d.Key()) || d.Namespace == b {
			return d, false // it exists (perhaps with no ready endpoint): no fallback
		}
		d.Namespace = b
		return d, true
	}
}

// vsState is the VirtualServices' state for the metrics.
func (g *gateway) vsState() metrics.VirtualServices {
	var s metrics.VirtualServices
	res := g.routing.VirtualServices()
	if res == nil {
		return s
	}
	s.Applied = res.Applied
	for o := range res.Rejected {
		s.Rejected = append(s.Rejected, o)
	}
	for _, is := range res.Issues {
		s.Fields = append(s.Fields, metrics.UnimplementedField{Object: is.Object, Field: is.Field, Rejects: is.Rejects})
	}
	return s
}

// setEnvironments replaces the routing table when discovery finds the
// environments changed (a namespace gained or lost the opt-in label).
func (g *gateway) setEnvironments(envs []string) {
	g.tableMu.Lock()
	defer g.tableMu.Unlock()
	table, err := g.config().TableFor(envs)
	if err != nil {
		g.log.Error("routing table not updated", "error", err)
		return
	}
	g.routing.SetTable(table)
	g.log.Info("environments changed", "environments", envs)
}

// config is the configuration in force.
func (g *gateway) config() *config.Config { return g.cur.Load() }

// ready is the readiness check: discovery synced and not draining.
func (g *gateway) ready() error {
	if g.draining.Load() {
		return errors.New("draining")
	}
	if !g.store.Synced() {
		return errors.New("discovery has not synced")
	}
	if g.vsReady != nil && !g.vsReady() {
		return errors.New("the VirtualService watch has not synced")
	}
	return nil
}

// kubeConfig loads a kubeconfig file (path, else $KUBECONFIG), or the
// in-cluster service account when there is neither.
func kubeConfig(path string) (*rest.Config, error) {
	if path == "" && os.Getenv("KUBECONFIG") == "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes: no kubeconfig and not in a cluster: %w", err)
		}
		return rc, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return rc, nil
}

// certProvider is a listener's source of certificates: files reloaded when
// they change, or ACME.
func (g *gateway) certProvider(t *config.TLS) (certs.Provider, error) {
	if t.ACME == nil {
		files, err := certs.NewFiles(t.CertFile, t.KeyFile, t.ReloadInterval, g.log)
		if err != nil {
			return nil, err
		}
		files.OnReload(g.metrics.CertificateReloaded)
		g.background = append(g.background, files.Run)
		return files, nil
	}
	a := t.ACME
	c := certs.ACMEConfig{Hosts: a.Hosts, Email: a.Email, DirectoryURL: a.DirectoryURL}
	if a.CAFile != "" {
		roots, err := certs.LoadRoots(a.CAFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = roots
	}
	if a.CacheDir != "" {
		c.Cache = autocert.DirCache(a.CacheDir)
	} else {
		rc, err := kubeConfig(a.Kubeconfig)
		if err != nil {
			return nil, err
		}
		rc.UserAgent = "envgate/" + version
		client, err := dynamic.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		ns, name, _ := strings.Cut(a.CacheSecret, "/")
		c.Cache = &certs.SecretCache{Secrets: client.Resource(certs.SecretsResource).Namespace(ns), Name: name}
	}
	return certs.NewACME(c)
}

// serverTLS serves certificates from p, TLS 1.2 at least, offering
// HTTP/2 and HTTP/1.1 by ALPN as Istio's gateway does on an HTTPS port.
func serverTLS(p certs.Provider) *tls.Config {
	// acme-tls/1 lets an ACME CA validate TLS-ALPN-01 on this listener;
	// autocert answers it in GetCertificate.
	return &tls.Config{GetCertificate: p.GetCertificate, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1", acme.ALPNProto}}
}

// streamWorkers is how many goroutines serve calls, ready, per listener: 64
// took about 5% off the CPU per call at 50 concurrent calls (make bench)
// for under 2 MB of stacks.
const streamWorkers = 64

// Flow-control windows the gateway grants its clients. Fixed windows turn
// off gRPC's bandwidth-delay estimation, whose pings cost a read and a
// write per handful of calls (measured: reads per call 1.05 -> 0.73 under
// ghz); a stream window of 256 KiB takes a 64 KiB message without waiting
// for an update, and the connection window bounds what one client
// connection can have buffered in the gateway.
const (
	clientStreamWindow = 256 << 10
	clientConnWindow   = 4 << 20
)

// readBufferSize is what gRPC's server reads a connection through: its
// default 32 KiB bufio.Reader on plaintext, where it turns a syscall per
// frame into one per batch; none on TLS, whose connection already buffers
// a decrypted record, so that the reader is a copy for nothing and 32 KiB
// per connection for as long as it is open: two thirds of an idle TLS
// connection's heap (make bench's connection rows).
func readBufferSize(tls bool) int {
	if tls {
		return 0
	}
	return 32 << 10
}

func newServer(cfg *config.Config, creds credentials.TransportCredentials, handler grpc.StreamHandler, tls bool) *grpc.Server {
	l := cfg.Limits
	return grpc.NewServer(
		grpc.ReadBufferSize(readBufferSize(tls)),
		// Calls run on long-lived goroutines whose stacks have already
		// grown, instead of a new goroutine growing its stack on every
		// call; beyond 64 concurrent calls gRPC starts goroutines again.
		grpc.NumStreamWorkers(streamWorkers),
		grpc.Creds(creds),
		grpc.UnknownServiceHandler(handler),
		grpc.ForceServerCodecV2(proxy.ServerCodec()),
		// Compressed requests are kept compressed (proxy.RecvDecompressor),
		// and checked at their wire size plus the pass-through marker.
		proxy.RecvDecompressor(),
		grpc.MaxRecvMsgSize(l.MaxMessageBytes+proxy.MarkerLen),
		grpc.MaxSendMsgSize(l.MaxMessageBytes),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		// Advertised in SETTINGS; a longer list resets its stream
		// (FRAME_SIZE_ERROR, as Envoy's HTTP/2 codec does on header
		// overflow) and is never held: the decoder stops keeping fields
		// past it.
		grpc.MaxHeaderListSize(uint32(l.MaxRequestHeadersBytes)),
		// At its default, said so that gRPC's SETTINGS are the
		// sniffer's (interimSettings).
		grpc.HeaderTableSize(headerTableSize),
		grpc.InitialWindowSize(clientStreamWindow),
		grpc.InitialConnWindowSize(clientConnWindow),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             l.KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:              l.KeepaliveTime,
			Timeout:           l.KeepaliveTimeout,
			MaxConnectionIdle: l.IdleTimeout,
		}),
	)
}

// Addrs are the bound listener addresses, in configuration order.
func (g *gateway) Addrs() []string {
	out := make([]string, len(g.listeners))
	for i, l := range g.listeners {
		out[i] = l.Addr().String()
	}
	return out
}

// Run serves until ctx ends, then stops accepting, lets calls in flight
// finish for up to the shutdown grace, and closes what is left.
func (g *gateway) Run(ctx context.Context) error {
	// Discovery and upstream connections outlive the listeners, so calls
	// draining after ctx ends still reach their endpoints.
	bgCtx, stopBg := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.pool.Run(bgCtx) })
	sourceErr := make(chan error, len(g.background))
	for _, run := range g.background {
		wg.Go(func() {
			if err := run(bgCtx); err != nil && bgCtx.Err() == nil {
				sourceErr <- err
			}
		})
	}
	for _, a := range []struct {
		name string
		srv  *http.Server
		lis  net.Listener
	}{{"admin", g.admin, g.adminLis}, {"debug", g.debug, g.debugLis}} {
		if a.srv == nil {
			continue
		}
		g.log.Info(a.name+" listening", "address", a.lis.Addr().String())
		wg.Go(func() {
			if err := a.srv.Serve(a.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				g.log.Error(a.name+" server", "error", err)
			}
		})
	}
	defer func() {
		if g.admin != nil {
			_ = g.admin.Close()
		}
		if g.debug != nil {
			_ = g.debug.Close()
		}
		stopBg()
		wg.Wait()
	}()

	serveErr := make(chan error, 3*len(g.servers))
	var serving sync.WaitGroup
	for i, srv := range g.servers {
		mux, hs := g.listeners[i], g.https[i]
		g.log.Info("listening", "address", mux.Addr().String(), "tls", g.cfg.Listeners[i].TLS != nil, "version", version)
		serving.Go(func() {
			if err := mux.Run(); err != nil {
				serveErr <- fmt.Errorf("accept %s: %w", mux.Addr(), err)
			}
		})
		serving.Go(func() {
			if err := srv.Serve(mux.Listener(sniff.GRPC)); err != nil {
				serveErr <- fmt.Errorf("serve gRPC %s: %w", mux.Addr(), err)
			}
		})
		serving.Go(func() {
			if err := hs.Serve(mux.Listener(sniff.HTTP)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("serve HTTP %s: %w", mux.Addr(), err)
			}
		})
		h2 := g.h2s[i]
		serving.Go(func() {
			if err := h2.Serve(mux.Listener(sniff.HTTP2)); err != nil && !errors.Is(err, h2front.ErrServerClosed) {
				serveErr <- fmt.Errorf("serve HTTP/2 %s: %w", mux.Addr(), err)
			}
		})
		h1 := g.h1s[i]
		serving.Go(func() {
			if err := h1.Serve(mux.Listener(sniff.HTTP1)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("serve HTTP/1.1 %s: %w", mux.Addr(), err)
			}
		})
	}

	wg.Go(func() {
		select {
		case <-g.store.WaitSynced():
			if !g.draining.Load() {
				g.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
			}
		case <-bgCtx.Done():
		}
	})

	var err error
	select {
	case <-ctx.Done():
		// Readiness fails at once so the load balancer and the endpoints
		// controller stop sending; calls keep being served meanwhile.
		g.drain()
		cfg := g.config()
		g.log.Info("draining", "delay", cfg.DrainDelay.String(), "grace", cfg.ShutdownGrace.String())
		time.Sleep(cfg.DrainDelay)
	case err = <-serveErr:
		g.drain()
	case err = <-sourceErr:
		g.drain()
	}
	g.stop(g.config().ShutdownGrace)
	if g.tracing != nil {
		// The spans of the last calls are still batched: send them.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := g.tracing.Shutdown(ctx); err != nil {
			g.log.Warn("tracing: spans not sent at shutdown", "error", err)
		}
		cancel()
	}
	serving.Wait()
	return err
}

// state is what the metrics report at scrape time.
func (g *gateway) state() metrics.State {
	s := metrics.State{Synced: g.store.Synced(), Draining: g.draining.Load(), Endpoints: map[string]int{}}
	for _, r := range g.routing.Table().Rules() {
		for _, d := range r.Action.Destinations {
			if d.NoService != "" {
				continue
			}
			key, err := g.endpointSet(d.Destination)
			if err != nil {
				continue
			}
			eps, _ := g.store.Get(key)
			s.Endpoints[d.Namespace] = len(eps)
		}
	}
	return s
}

// routeView is the live routing table with each destination's endpoints,
// for /routes.
func (g *gateway) routeView() any {
	return struct {
		Synced   bool `json:"synced"`
		Draining bool `json:"draining"`
		// Config is the latest reload of the configuration file.
		Config *reloadStatus `json:"config,omitempty"`
		routing.View
	}{g.store.Synced(), g.draining.Load(), g.reloaded.Load(), g.routing.View(g.dialTargets)}
}

// endpointSet is the key of the endpoint set a destination reaches: its
// Service port, as discovery maps it.
func (g *gateway) endpointSet(d route.Destination) (string, error) {
	return g.store.Resolve(d.Key(), d.Port, g.cfg.Routing.Port)
}

// target is where a call to d goes: the endpoint set of its Service port
// (of its subset, with a DestinationRule subset) and the policy its client
// reaches it with.
func (g *gateway) target(d route.Destination) (upstream.Target, destinationrule.Policy, error) {
	set, err := g.endpointSet(d)
	if err != nil {
		return upstream.Target{}, destinationrule.Policy{}, err
	}
	p, err := g.routing.Policy(d, portNumber(set))
	if err != nil {
		return upstream.Target{}, p, err
	}
	if p.Labels != nil {
		if _, exists := g.store.Get(set); exists && !g.store.Labeled(set) {
			return upstream.Target{}, p, fmt.Errorf("%s: subset %q selects pods by their labels, which only kubernetes discovery knows", d, p.Subset)
		}
		set = g.store.Subset(set, p.Labels)
	}
	up, err := g.policy.For(d, set, p, g.routing.DestinationRules())
	return upstream.Target{Set: set, Policy: up}, p, err
}

// portNumber is the Service port number at the end of a set key
// ("app-service.env1:50051"), 0 without one.
func portNumber(set string) uint32 {
	i := strings.LastIndexByte(set, ':')
	if i < 0 {
		return 0
	}
	n, err := strconv.ParseUint(set[i+1:], 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

// dialTargets is what a call to d would dial, for the views.
func (g *gateway) dialTargets(d route.Destination) routing.Dial {
	t, p, err := g.target(d)
	if err != nil {
		return routing.Dial{Error: err.Error()}
	}
	eps, ok := g.store.Get(t.Set)
	dial := routing.Dial{Set: t.Set, Endpoints: eps, Discovered: ok, TLS: policy.Describe(t.Policy), DestinationRule: p.From}
	return dial
}

// drain turns readiness and gRPC health to not serving, and asks HTTP/1.1
// clients to reconnect (Connection: close), as Envoy's drain does.
func (g *gateway) drain() {
	g.draining.Store(true)
	g.health.Shutdown()
	for _, hs := range g.https {
		hs.SetKeepAlivesEnabled(false)
	}
	for _, h1 := range g.h1s {
		h1.SetKeepAlivesEnabled(false)
	}
	for _, h2 := range g.h2s {
		h2.Drain()
	}
}

// stop drains every server at once and forces them closed after grace.
func (g *gateway) stop(grace time.Duration) {
	for _, m := range g.listeners {
		_ = m.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, srv := range g.servers {
			wg.Go(srv.GracefulStop)
		}
		for _, hs := range g.https {
			wg.Go(func() { _ = hs.Shutdown(ctx) })
		}
		for _, h1 := range g.h1s {
			wg.Go(func() { _ = h1.Shutdown(ctx) })
		}
		for _, h2 := range g.h2s {
			wg.Go(func() { _ = h2.Shutdown(ctx) })
		}
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		g.log.Info("stopped: every call finished")
	case <-ctx.Done():
		g.log.Warn("stopped: shutdown grace over, ending calls in flight")
		for _, srv := range g.servers {
			srv.Stop()
		}
		for _, hs := range g.https {
			_ = hs.Close()
		}
		for _, h1 := range g.h1s {
			h1.Close()
		}
		for _, h2 := range g.h2s {
			h2.Close()
		}
		<-done
	}
	g.front.Close()
}

// closeListeners undoes a newGateway that failed part way: the listeners
// bound so far, and the span exporter.
func (g *gateway) closeListeners() {
	if g.tracing != nil {
		_ = g.tracing.Shutdown(context.Background())
	}
	for _, l := range g.listeners {
		_ = l.Close()
	}
	if g.adminLis != nil {
		_ = g.adminLis.Close()
	}
	if g.debugLis != nil {
		_ = g.debugLis.Close()
	}
}

// DebugAddr is the bound debug address, or "" without one.
func (g *gateway) DebugAddr() string {
	if g.debugLis == nil {
		return ""
	}
	return g.debugLis.Addr().String()
}

// AdminAddr is the bound admin address, or "" without one.
func (g *gateway) AdminAddr() string {
	if g.adminLis == nil {
		return ""
	}
	return g.adminLis.Addr().String()
}

// poolUpstreams adapts the pool to what the proxy asks of it.
type poolUpstreams struct {
	pool   *upstream.Pool
	target func(route.Destination) (upstream.Target, destinationrule.Policy, error)
}

func (u poolUpstreams) Conn(d route.Destination) (grpc.ClientConnInterface, error) {
	t, _, err := u.target(d)
	if err != nil {
		return nil, err
	}
	c, err := u.pool.Get(t)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// everyRecord is a handler that takes records of every level: the level
// of the handler it wraps filters the gateway's own log, not the access
// log.
type everyRecord struct{ slog.Handler }

func (everyRecord) Enabled(context.Context, slog.Level) bool { return true }
func (h everyRecord) WithAttrs(a []slog.Attr) slog.Handler {
	return everyRecord{h.Handler.WithAttrs(a)}
}
func (h everyRecord) WithGroup(name string) slog.Handler {
	return everyRecord{h.Handler.WithGroup(name)}
}
