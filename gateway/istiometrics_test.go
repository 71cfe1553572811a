package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/internal/paritytest"
	"github.com/envgate/envgate/proto/echopb"
)

// istioFixture is testdata/istio-metrics.txt: Istio's metric names and
// types, labels and buckets.
type istioFixture struct {
	metrics map[string]dto.MetricType
	labels  []string
	buckets []float64
}

func readIstioFixture(t *testing.T) istioFixture {
	t.Helper()
	f, err := os.Open("testdata/istio-metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fx := istioFixture{metrics: map[string]dto.MetricType{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch fields[0] {
		case "metric":
			fx.metrics[fields[1]] = map[string]dto.MetricType{"counter": dto.MetricType_COUNTER, "histogram": dto.MetricType_HISTOGRAM}[fields[2]]
		case "label":
			fx.labels = append(fx.labels, fields[1])
		case "bucket":
			for _, b := range fields[1:] {
				v, err := strconv.ParseFloat(b, 64)
				if err != nil {
					t.Fatal(err)
				}
				fx.buckets = append(fx.buckets, v)
			}
		}
	}
	slices.Sort(fx.labels)
	return fx
}

// Issue 14, point 2: with istioMetrics on, /metrics carries Istio's
// standard request metrics with Istio's names, labels and buckets (the
// fixture), valued as an Istio ingress gateway values them (reporter
// "source", the routed service as destination, response_code and a
// numeric grpc_response_status: istio/proxy istio_stats.cc
// IstioStatsFilter::log, populatePeerInfo for Reporter::ClientSidecar);
// envgate's own metrics keep their names, and gain retries, upstream
// connections and ejections; promtool check metrics passes.
func TestIstioMetrics(t *testing.T) {
	fx := readIstioFixture(t)
	b, flaky := startBackend(t, "env1"), startBackend(t, "flaky")
	webAddr := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello") }))
	cfg := vsConfig(t, paritytest.VS("all", paritytest.T0, `  - match: [{headers: {env: {exact: env1}, content-type: {prefix: application/grpc}}}]
    route: [{destination: {host: app-service.env1.svc.cluster.local}}]
  - match: [{headers: {env: {exact: env1}}}]
    route: [{destination: {host: hellosvc.env1.svc.cluster.local}}]
  - match: [{headers: {env: {exact: flaky}}}]
    route: [{destination: {host: app-service.flaky.svc.cluster.local}}]
    retries: {attempts: 2, retryOn: unavailable}`), map[string][]string{
		"env1": {b.addr}, "hellosvc.env1": {webAddr}, "flaky": {flaky.addr},
	}, func(c *config.Config) {
		c.IstioMetrics = &config.IstioMetrics{Namespace: "envgate-system"}
	})
	gw := startGateway(t, cfg, nil)
	addr := gw.Addrs()[0]
	c := echoClient(t, addr)
	if _, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Call(withEnv(testCtx(t), "nope"), &echopb.EchoRequest{})
	// Retried twice, then counted against the endpoint by outlier
	// detection: five consecutive UNAVAILABLEs eject it.
	for range 2 {
		_, _ = c.Call(withEnv(testCtx(t), "flaky"), &echopb.EchoRequest{StatusCode: int32(codes.Unavailable)})
	}
	req, _ := http.NewRequestWithContext(testCtx(t), "GET", "http://"+addr+"/", nil)
	req.Header.Set("env", "env1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	text := scrape(t, gw, "/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	type series = map[string]string
	var requests []series
	for name, typ := range fx.metrics {
		mf, ok := families[name]
		if !ok {
			t.Fatalf("no %s", name)
		}
		if mf.GetType() != typ {
			t.Errorf("%s is a %v, Istio's a %v", name, mf.GetType(), typ)
		}
		for _, m := range mf.GetMetric() {
			got := series{}
			var names []string
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
				names = append(names, l.GetName())
			}
			slices.Sort(names)
			if !slices.Equal(names, fx.labels) {
				t.Fatalf("%s labels %v, Istio's %v", name, names, fx.labels)
			}
			if h := m.GetHistogram(); h != nil {
				var bounds []float64
				for _, bk := range h.GetBucket() {
					if !math.IsInf(bk.GetUpperBound(), 1) { // Prometheus's own last bucket
						bounds = append(bounds, bk.GetUpperBound())
					}
				}
				if !slices.Equal(bounds, fx.buckets) {
					t.Errorf("%s buckets %v, Istio's %v", name, bounds, fx.buckets)
				}
			}
			if name == "istio_requests_total" {
				got["value"] = strconv.FormatFloat(m.GetCounter().GetValue(), 'f', -1, 64)
				requests = append(requests, got)
			}
		}
	}
	common := series{"reporter": "source", "source_workload": "envgate", "source_app": "envgate",
		"source_canonical_service": "envgate", "source_workload_namespace": "envgate-system",
		"source_cluster": "Kubernetes", "connection_security_policy": "unknown"}
	for _, want := range []series{
		{"request_protocol": "grpc", "destination_service": "app-service.env1.svc.cluster.local", "destination_service_name": "app-service",
			"destination_service_namespace": "env1", "response_code": "200", "grpc_response_status": "0", "response_flags": "-", "value": "1"},
		{"request_protocol": "grpc", "destination_service": "unknown", "response_code": "404", "grpc_response_status": "12", "response_flags": "NR", "value": "1"},
		{"request_protocol": "grpc", "destination_service": "app-service.flaky.svc.cluster.local", "response_code": "200", "grpc_response_status": "14", "response_flags": "URX", "value": "2"},
		{"request_protocol": "http", "destination_service": "hellosvc.env1.svc.cluster.local", "destination_service_name": "hellosvc",
			"response_code": "200", "grpc_response_status": "", "response_flags": "-", "value": "1"},
	} {
		found := false
		for _, s := range requests {
			match := true
			for k, v := range want {
				match = match && s[k] == v
			}
			for k, v := range common {
				match = match && s[k] == v
			}
			found = found || match
		}
		if !found {
			t.Errorf("no istio_requests_total series with %v; have %v", want, requests)
		}
	}
	for _, line := range []string{
		`istio_request_messages_total{` + `connection_security_policy="unknown",destination_app="unknown",destination_canonical_revision="latest",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="app-service.env1.svc.cluster.local",destination_service_name="app-service",destination_service_namespace="env1",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="env1",grpc_response_status="0",reporter="source",request_protocol="grpc",response_code="200",response_flags="-",source_app="envgate",source_canonical_revision="latest",source_canonical_service="envgate",source_cluster="Kubernetes",source_principal="unknown",source_version="unknown",source_workload="envgate",source_workload_namespace="envgate-system"} 1`,
		// envgate's own, alongside.
		`envgate_calls_total{code="OK",env="env1",method="/echo.EchoService/Call"} 1`,
		`envgate_upstream_retries_total{env="flaky"} 4`,
		`envgate_upstream_connections_opened_total{protocol="grpc"} 2`,
		`envgate_upstream_connections_opened_total{protocol="http"} 1`,
		`envgate_upstream_ejections_total 1`,
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("no line %s", line)
		}
	}
	promtoolCheck(t, text)
}

// serveHTTP serves h on a loopback port until the test ends.
func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return lis.Addr().String()
}

// promtoolCheck runs Prometheus's own linter on an exposition. The one
// finding allowed is Istio's: istio_request_duration_milliseconds breaks
// Prometheus's base-unit rule, and its name is what Istio's dashboards
// query. Any other finding, or a parse error (exit status other than 0
// and promtool's lint status 3), fails.
func promtoolCheck(t *testing.T, text string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool(t, "promtool"), "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 3) {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	allowed := `istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"`
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && l != allowed {
			t.Errorf("promtool check metrics: %s", l)
		}
	}
}
