// Package istiometrics emits Istio's standard request metrics
// (https://istio.io/latest/docs/reference/config/metrics/) with Istio's
// names, labels and buckets, as an Istio ingress gateway reports them, so
// that dashboards and alerts written for Istio (the Istio Grafana
// dashboards, Kiali, ASM's service dashboards) read envgate unchanged.
//
// An ingress gateway is a client of the mesh: its stats filter runs with
// the client reporter (reporter="source"), its own workload as the source
// and the routed service as the destination (istio/proxy
// source/extensions/filters/http/istio_stats/istio_stats.cc,
// IstioStatsFilter::log and populatePeerInfo, Reporter::ClientSidecar).
package istiometrics

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Labels are the labels of every request metric, as istio_stats.cc's
// Context::all_tags_ lists them.
var Labels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy", "response_code", "grpc_response_status",
}

// Buckets are Envoy's default histogram buckets, which Istio's histograms
// use unless a pod overrides them (envoy source/common/stats/
// histogram_impl.cc HistogramSettingsImpl::defaultBuckets): milliseconds
// for the duration, bytes for the sizes.
var Buckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// Source is the gateway's own workload, the source of every request.
type Source struct {
	Workload  string // the Deployment's name (source_workload, source_app, source_canonical_service)
	Namespace string // source_workload_namespace
	Cluster   string // source_cluster: Istio's cluster id
	Principal string // source_principal: the gateway's SPIFFE identity when it has one
}

// Exchange is one finished gRPC call or HTTP request.
type Exchange struct {
	GRPC bool
	// Service is the destination service's host
	// (app-service.env1.svc.cluster.local), "" when none was routed to.
	Service string
	// Code is the HTTP status Envoy records: 200 for a gRPC call the
	// upstream answered, the local reply's status otherwise, 0 when the
	// client went away first.
	Code int
	// GRPCStatus is the call's status code, -1 for HTTP.
	GRPCStatus int
	// Flags are Envoy's response flags, "-" for none.
	Flags string
	// Env is the routed environment ("" unrouted); Retries the tries
	// after the first (for envgate's own metrics).
	Env                               string
	Retries                           int
	Duration                          time.Duration
	RequestBytes, ResponseBytes       int64
	RequestMessages, ResponseMessages int64
}

// Metrics are the istio_* collectors.
type Metrics struct {
	src                           Source
	requests                      *prometheus.CounterVec
	duration, reqBytes, respBytes *prometheus.HistogramVec
	reqMessages, respMessages     *prometheus.CounterVec
	series                        sync.Map // key -> *series; bounded as the labels are
}

type key struct {
	grpc           bool
	service        string
	code, grpcCode int
	flags          string
}

type series struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
	reqMessages, respMessages     prometheus.Counter
}

// New registers the istio_* metrics on reg.
func New(reg prometheus.Registerer, src Source) *Metrics {
	m := &Metrics{
		src: src,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_requests_total", Help: "Requests (Istio standard metric), incremented at each request's end.",
		}, Labels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_duration_milliseconds", Help: "Request duration in milliseconds (Istio standard metric).", Buckets: Buckets,
		}, Labels),
		reqBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_bytes", Help: "Request body bytes (Istio standard metric).", Buckets: Buckets,
		}, Labels),
		respBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_response_bytes", Help: "Response body bytes (Istio standard metric).", Buckets: Buckets,
		}, Labels),
		reqMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_request_messages_total", Help: "gRPC messages sent by clients (Istio standard metric).",
		}, Labels),
		respMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_response_messages_total", Help: "gRPC messages sent to clients (Istio standard metric).",
		}, Labels),
	}
	reg.MustRegister(m.requests, m.duration, m.reqBytes, m.respBytes, m.reqMessages, m.respMessages)
	return m
}

// Record counts e.
func (m *Metrics) Record(e Exchange) {
	if e.GRPCStatus > 16 {
		e.GRPCStatus = 2 // UNKNOWN, as gRPC reads a code it does not know; bounds the label
	}
	if e.Code < 0 || e.Code > 999 {
		e.Code = 0
	}
	k := key{grpc: e.GRPC, service: e.Service, code: e.Code, grpcCode: e.GRPCStatus, flags: e.Flags}
	s, ok := m.series.Load(k)
	if !ok {
		s, _ = m.series.LoadOrStore(k, m.newSeries(k))
	}
	ss := s.(*series)
	ss.requests.Inc()
	ss.duration.Observe(float64(e.Duration.Microseconds()) / 1000)
	ss.reqBytes.Observe(float64(e.RequestBytes))
	ss.respBytes.Observe(float64(e.ResponseBytes))
	if e.GRPC {
		ss.reqMessages.Add(float64(e.RequestMessages))
		ss.respMessages.Add(float64(e.ResponseMessages))
	}
}

func (m *Metrics) newSeries(k key) *series {
	v := m.values(k)
	return &series{
		requests:     m.requests.WithLabelValues(v...),
		duration:     m.duration.WithLabelValues(v...),
		reqBytes:     m.reqBytes.WithLabelValues(v...),
		respBytes:    m.respBytes.WithLabelValues(v...),
		reqMessages:  m.reqMessages.WithLabelValues(v...),
		respMessages: m.respMessages.WithLabelValues(v...),
	}
}

// values are the label values of k in Labels' order, as populatePeerInfo
// fills them for the client reporter: what envgate does not know of the
// destination's workload (Istio learns it by metadata exchange) is
// "unknown", as Istio writes it when the exchange did not happen.
func (m *Metrics) values(k key) []string {
	or := func(s, def string) string {
		if s == "" {
			return def
		}
		return s
	}
	// The destination's pods are in its service's namespace: what the
	// peer's identity or metadata tells Istio.
	svc, name, ns := "unknown", "unknown", "unknown"
	if k.service != "" {
		svc, name = k.service, k.service
		if n, rest, ok := strings.Cut(k.service, "."); ok {
			name = n
			ns, _, _ = strings.Cut(rest, ".")
		}
	}
	proto, grpcStatus := "http", ""
	if k.grpc {
		proto, grpcStatus = "grpc", strconv.Itoa(k.grpcCode)
	}
	workload := or(m.src.Workload, "unknown")
	return []string{
		"source",
		workload, or(m.src.Namespace, "unknown"), or(m.src.Principal, "unknown"), workload, "unknown",
		workload, "latest", or(m.src.Cluster, "unknown"),
		"unknown", ns, "unknown", "unknown",
		"unknown", svc, name, ns,
		"unknown", "latest", "unknown",
		proto, or(k.flags, "-"), "unknown", strconv.Itoa(k.code), grpcStatus,
	}
}
