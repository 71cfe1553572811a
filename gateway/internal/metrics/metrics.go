// Package metrics holds the gateway's Prometheus collectors, registered on a
// registry the caller injects.
package metrics

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// maxMethods bounds the method label per environment: method names come
// from clients, so past this many distinct ones in an environment the rest
// are counted as "other". Calls that were not routed get no method label
// at all (""), so names sent to no environment take no slot.
const maxMethods = 200

// Metrics are the gateway's call metrics.
type Metrics struct {
	calls    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	inFlight prometheus.Gauge
	reloads  *prometheus.CounterVec
	conns    *prometheus.CounterVec

	configReloads *prometheus.CounterVec
	configOK      prometheus.Gauge

	// Upstream: retries by environment (bounded as env is), connections
	// opened and failed by protocol, outlier ejections.
	retries     *prometheus.CounterVec
	upConns     *prometheus.CounterVec
	upConnFails *prometheus.CounterVec
	ejections   prometheus.Counter

	// The HTTP front's requests. The labels are bounded: env is a routed
	// environment ("" unrouted), code an HTTP status the gateway wrote.
	requests     *prometheus.CounterVec
	reqLatency   *prometheus.HistogramVec
	reqBytes     *prometheus.CounterVec
	reqsInFlight prometheus.Gauge

	mu      sync.RWMutex
	methods map[string]map[string]bool // env -> method names counted

	// series caches each label combination's collectors: looking them up
	// in the vectors hashes every label on every call. Bounded like the
	// labels themselves (configured environments, maxMethods, codes).
	series cowMap[seriesKey, *callSeries]
	// reqSeries is the same for HTTP requests: routed environments
	// and status codes of three digits.
	reqSeries cowMap[reqKey, *callSeries]
}

type reqKey struct {
	env  string
	code int
}

type seriesKey struct {
	env, method string
	code        codes.Code
}

type callSeries struct {
	calls             prometheus.Counter
	latency           prometheus.Observer
	bytesIn, bytesOut prometheus.Counter
}

// New registers the collectors on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_calls_total",
			Help: "Calls handled, by environment (empty when unrouted), full method and gRPC status code.",
		}, []string{"env", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "envgate_call_duration_seconds",
			Help:    "Time from a call's arrival to its end, by environment and status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18), // 0.5 ms to about 65 s
		}, []string{"env", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_message_bytes_total",
			Help: "Message bytes forwarded, by environment and direction (in: from clients, out: to clients).",
		}, []string{"env", "direction"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "envgate_calls_in_flight",
			Help: "Calls (streams) being handled now.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_certificate_reloads_total",
			Help: "Serving certificate reloads, by result (ok, error).",
		}, []string{"result"}),
		configReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_config_reloads_total",
			Help: "Configuration file reloads (file change or SIGHUP), by result (ok, error: the running configuration stayed).",
		}, []string{"result"}),
		configOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "envgate_config_last_reload_successful",
			Help: "1 when the latest configuration reload succeeded (or none was tried), 0 when it failed.",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_upstream_retries_total",
			Help: "Tries after the first of gRPC calls and HTTP requests, by environment.",
		}, []string{"env"}),
		upConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_upstream_connections_opened_total",
			Help: "Upstream TCP connections opened, by protocol (grpc: the HTTP/2 client, http: the HTTP front's).",
		}, []string{"protocol"}),
		upConnFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_upstream_connect_failures_total",
			Help: "Upstream TCP connections that could not be opened, by protocol.",
		}, []string{"protocol"}),
		ejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "envgate_upstream_ejections_total",
			Help: "Upstream endpoints ejected by outlier detection.",
		}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_downstream_connections_closed_total",
			Help: "Client connections the gateway refused or closed, by reason (limit: over limits.maxConnections; premature_resets: too many streams reset early; overload: held the most memory when the gateway neared its memory limit).",
		}, []string{"reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_http_requests_total",
			Help: "HTTP requests (HTTP/1.1 and REST over HTTP/2) handled, by environment (empty when unrouted) and status code.",
		}, []string{"env", "code"}),
		reqLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "envgate_http_request_duration_seconds",
			Help:    "Time from an HTTP request's arrival to the end of its response, by environment.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}, []string{"env"}),
		reqBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envgate_http_body_bytes_total",
			Help: "HTTP body bytes forwarded, by environment and direction (in: from clients, out: to clients).",
		}, []string{"env", "direction"}),
		reqsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "envgate_http_requests_in_flight",
			Help: "HTTP requests being handled now.",
		}),
		methods: map[string]map[string]bool{},
	}
	m.configOK.Set(1)
	reg.MustRegister(m.calls, m.latency, m.bytes, m.inFlight, m.reloads, m.conns, m.configReloads, m.configOK, m.retries, m.upConns, m.upConnFails, m.ejections, m.requests, m.reqLatency, m.reqBytes, m.reqsInFlight)
	return m
}

// RequestStarted counts an HTTP request in flight.
func (m *Metrics) RequestStarted() { m.reqsInFlight.Inc() }

// RequestDone records a finished HTTP request.
func (m *Metrics) RequestDone(env string, code int, d time.Duration, bytesIn, bytesOut int64) {
	m.reqsInFlight.Dec()
	s := m.reqSeries.getOrAdd(reqKey{env, code}, func() *callSeries {
		return &callSeries{
			calls:    m.requests.WithLabelValues(env, strconv.Itoa(code)),
			latency:  m.reqLatency.WithLabelValues(env),
			bytesIn:  m.reqBytes.WithLabelValues(env, "in"),
			bytesOut: m.reqBytes.WithLabelValues(env, "out"),
		}
	})
	s.calls.Inc()
	s.latency.Observe(d.Seconds())
	if bytesIn > 0 {
		s.bytesIn.Add(float64(bytesIn))
	}
	if bytesOut > 0 {
		s.bytesOut.Add(float64(bytesOut))
	}
}

// CallStarted counts a call in flight.
func (m *Metrics) CallStarted() { m.inFlight.Inc() }

// CallDone records a finished call.
func (m *Metrics) CallDone(env, method string, code codes.Code, d time.Duration, bytesIn, bytesOut int64) {
	m.inFlight.Dec()
	s := m.seriesOf(env, method, code)
	s.calls.Inc()
	s.latency.Observe(d.Seconds())
	if bytesIn > 0 {
		s.bytesIn.Add(float64(bytesIn))
	}
	if bytesOut > 0 {
		s.bytesOut.Add(float64(bytesOut))
	}
}

func (m *Metrics) seriesOf(env, method string, code codes.Code) *callSeries {
	// The key holds the method label, not the client's name, so the cache
	// is as bounded as the labels. A key is only ever stored with its
	// label, so a hit with the client's name is a name that is its own
	// label (a known method, or "other" or "" when those are what the
	// name maps to): no need to ask method, and take its lock, first.
	if s, ok := m.series.get(seriesKey{env, method, code}); ok {
		return s
	}
	k := seriesKey{env, m.method(env, method), code}
	return m.series.getOrAdd(k, func() *callSeries {
		c := code.String()
		return &callSeries{
			calls:    m.calls.WithLabelValues(env, k.method, c),
			latency:  m.latency.WithLabelValues(env, c),
			bytesIn:  m.bytes.WithLabelValues(env, "in"),
			bytesOut: m.bytes.WithLabelValues(env, "out"),
		}
	})
}

// method is the method label of a call routed to env ("": not routed).
func (m *Metrics) method(env, name string) string {
	if env == "" {
		return ""
	}
	m.mu.RLock()
	known := m.methods[env][name]
	n := len(m.methods[env])
	m.mu.RUnlock()
	if known {
		return name
	}
	if n >= maxMethods {
		return "other"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	names := m.methods[env]
	if names == nil {
		names = map[string]bool{}
		m.methods[env] = names
	}
	if len(names) >= maxMethods {
		return "other"
	}
	names[name] = true
	return name
}

// ConnectionRefused counts a client connection refused over the limit.
func (m *Metrics) ConnectionRefused() { m.conns.WithLabelValues("limit").Inc() }

// ConnectionClosedForResets counts a client connection closed for resetting
// too many streams early.
func (m *Metrics) ConnectionClosedForResets() { m.conns.WithLabelValues("premature_resets").Inc() }

// ConnectionClosedForOverload counts a client connection the overload
// manager closed for holding the most memory.
func (m *Metrics) ConnectionClosedForOverload() { m.conns.WithLabelValues("overload").Inc() }

// CertificateReloaded counts a reload attempt.
func (m *Metrics) CertificateReloaded(err error) {
	if err != nil {
		m.reloads.WithLabelValues("error").Inc()
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
}

// Retried counts n tries after the first for env.
func (m *Metrics) Retried(env string, n int) {
	if n > 0 {
		m.retries.WithLabelValues(env).Add(float64(n))
	}
}

// UpstreamDialed returns what counts the upstream connection attempts of
// protocol.
func (m *Metrics) UpstreamDialed(protocol string) func(error) {
	opened, failed := m.upConns.WithLabelValues(protocol), m.upConnFails.WithLabelValues(protocol)
	return func(err error) {
		if err != nil {
			failed.Inc()
			return
		}
		opened.Inc()
	}
}

// Ejected counts an outlier ejection.
func (m *Metrics) Ejected() { m.ejections.Inc() }

// ConfigReloaded counts a configuration reload.
func (m *Metrics) ConfigReloaded(err error) {
	if err != nil {
		m.configReloads.WithLabelValues("error").Inc()
		m.configOK.Set(0)
		return
	}
	m.configReloads.WithLabelValues("ok").Inc()
	m.configOK.Set(1)
}

// State reports what the gateway knows at scrape time.
type State struct {
	Synced    bool
	Draining  bool
	Endpoints map[string]int // per environment
}

// RegisterState adds gauges read from state() at every scrape, so keeping
// them costs nothing between scrapes.
func RegisterState(reg prometheus.Registerer, state func() State) {
	reg.MustRegister(&stateCollector{state: state})
}

var (
	syncedDesc    = prometheus.NewDesc("envgate_discovery_synced", "1 once discovery has delivered its first complete state.", nil, nil)
	drainingDesc  = prometheus.NewDesc("envgate_draining", "1 while the gateway drains before stopping.", nil, nil)
	envsDesc      = prometheus.NewDesc("envgate_environments", "Environments that can be routed to.", nil, nil)
	endpointsDesc = prometheus.NewDesc("envgate_endpoints", "Ready endpoints per environment.", []string{"env"}, nil)
)

type stateCollector struct{ state func() State }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- syncedDesc
	ch <- drainingDesc
	ch <- envsDesc
	ch <- endpointsDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.state()
	ch <- prometheus.MustNewConstMetric(syncedDesc, prometheus.GaugeValue, b2f(s.Synced))
	ch <- prometheus.MustNewConstMetric(drainingDesc, prometheus.GaugeValue, b2f(s.Draining))
	ch <- prometheus.MustNewConstMetric(envsDesc, prometheus.GaugeValue, float64(len(s.Endpoints)))
	for env, n := range s.Endpoints {
		ch <- prometheus.MustNewConstMetric(endpointsDesc, prometheus.GaugeValue, float64(n), env)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// VirtualServices is the state of the VirtualServices the gateway routes by.
type VirtualServices struct {
	Applied  []string
	Rejected []string
	// Fields not implemented: object, field, and whether it rejected the
	// object.
	Fields []UnimplementedField
}

// UnimplementedField names a field envgate does not implement.
type UnimplementedField struct {
	Object, Field string
	Rejects       bool
}

var (
	vsDesc = prometheus.NewDesc("envgate_virtualservice",
		"VirtualServices by state: applied, or rejected (see the logs or `gateway explain` for why).", []string{"object", "state"}, nil)
	vsFieldDesc = prometheus.NewDesc("envgate_virtualservice_unimplemented_field",
		"Fields of VirtualServices that envgate does not implement; effect is ignored or rejected.", []string{"object", "field", "effect"}, nil)
)

// RegisterVirtualServices publishes state() at every scrape:
// envgate_virtualservice{object, state} and
// envgate_virtualservice_unimplemented_field{object, field, effect}.
func RegisterVirtualServices(reg prometheus.Registerer, state func() VirtualServices) {
	reg.MustRegister(&vsCollector{state: state})
}

type vsCollector struct{ state func() VirtualServices }

func (c *vsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- vsDesc
	ch <- vsFieldDesc
}

func (c *vsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.state()
	for _, o := range s.Applied {
		ch <- prometheus.MustNewConstMetric(vsDesc, prometheus.GaugeValue, 1, o, "applied")
	}
	for _, o := range s.Rejected {
		ch <- prometheus.MustNewConstMetric(vsDesc, prometheus.GaugeValue, 1, o, "rejected")
	}
	for _, f := range s.Fields {
		effect := "ignored"
		if f.Rejects {
			effect = "rejected"
		}
		ch <- prometheus.MustNewConstMetric(vsFieldDesc, prometheus.GaugeValue, 1, f.Object, f.Field, effect)
	}
}
