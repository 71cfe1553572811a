package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Issue 14, point 2: Istio's own Grafana dashboards (istio/istio
// manifests/addons/dashboards, at the version the Makefile pins; make test
// copies them into bin/istio-dashboards) query only metric names and labels
// that envgate's istioMetrics export, so they work unchanged: every
// istio_requests/request/response series selector and grouping in them
// names a label of the fixture (testdata/istio-metrics.txt), which
// TestIstioMetrics checks envgate exports. TCP metrics (istio_tcp_*) are
// Istio's for TCP traffic, which envgate does not proxy.
func TestIstioDashboardsQueryExportedLabels(t *testing.T) {
	fx := readIstioFixture(t)
	labels := map[string]bool{"le": true}
	for _, l := range fx.labels {
		labels[l] = true
	}
	metrics := map[string]bool{}
	for m, typ := range fx.metrics {
		metrics[m] = true
		if typ.String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				metrics[m+s] = true
			}
		}
	}
	files, _ := filepath.Glob(filepath.Join(repoBin(t), "istio-dashboards", "*.json"))
	if len(files) < 3 {
		t.Fatalf("Istio's dashboards not found in bin/istio-dashboards (%v): run `make test`", files)
	}
	metricName := regexp.MustCompile(`\b(istio_[a-z_]+)`)
	matcher := regexp.MustCompile(`([a-z_]+)\s*(=~|!~|!=|=)\s*"`)
	grouping := regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	checked := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d any
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		var exprs []string
		var walk func(any)
		walk = func(o any) {
			switch v := o.(type) {
			case map[string]any:
				for k, x := range v {
					if s, ok := x.(string); ok && (k == "expr" || k == "query") {
						exprs = append(exprs, s)
					} else {
						walk(x)
					}
				}
			case []any:
				for _, x := range v {
					walk(x)
				}
			}
		}
		walk(d)
		for _, e := range exprs {
			names := metricName.FindAllString(e, -1)
			http := false
			for _, n := range names {
				if strings.HasPrefix(n, "istio_tcp_") || strings.HasPrefix(n, "istio_build") {
					continue
				}
				if strings.HasPrefix(n, "istio_request_duration_seconds") && strings.Contains(e, "istio_request_duration_milliseconds") {
					// "(… _milliseconds_bucket … / 1000) or … _seconds_bucket …":
					// the dashboards fall back to the older name; the first
					// half is the one envgate answers.
					continue
				}
				http = true
				if !metrics[n] {
					t.Errorf("%s queries %s, which envgate does not export", filepath.Base(f), n)
				}
			}
			if !http {
				continue // TCP panels (their labels are Istio's same set)
			}
			checked++
			for _, m := range matcher.FindAllStringSubmatch(e, -1) {
				if !labels[m[1]] {
					t.Errorf("%s: %q selects on %s, which envgate's Istio metrics lack", filepath.Base(f), e, m[1])
				}
			}
			for _, g := range grouping.FindAllStringSubmatch(e, -1) {
				for _, l := range strings.Split(g[1], ",") {
					if l = strings.TrimSpace(l); l != "" && !labels[l] {
						t.Errorf("%s: %q groups by %s, which envgate's Istio metrics lack", filepath.Base(f), e, l)
					}
				}
			}
		}
	}
	if checked < 100 {
		t.Fatalf("only %d HTTP queries found in Istio's dashboards", checked)
	}
}
