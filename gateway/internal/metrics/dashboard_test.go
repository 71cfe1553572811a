package metrics

import (
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc/codes"
)

// Every metric the shipped Grafana dashboard queries is one the gateway
// exports (issue 14, point 2): a renamed metric fails here rather than
// leaving an empty panel. Each collector is given a series first, since
// an empty vector exports nothing.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := New(reg)
	RegisterState(reg, func() State { return State{Endpoints: map[string]int{"env1": 1}} })
	m.CallStarted()
	m.CallDone("env1", "/s.S/M", codes.OK, time.Millisecond, 1, 1)
	m.RequestStarted()
	m.RequestDone("env1", 200, time.Millisecond, 1, 1)
	m.CertificateReloaded(nil)
	m.ConfigReloaded(errors.New("bad"))
	m.ConnectionRefused()
	m.Retried("env1", 1)
	m.UpstreamDialed("grpc")(nil)
	m.UpstreamDialed("grpc")(errors.New("refused"))
	m.Ejected()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				exported[f.GetName()+s] = true
			}
		}
	}

	b, err := os.ReadFile("../../../k8s/components/monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	// A metric name is an identifier followed by a selector or a range.
	name := regexp.MustCompile(`\b([a-z_][a-z0-9_]*)\{`)
	queried := 0
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range name.FindAllStringSubmatch(tg.Expr, -1) {
				queried++
				if !exported[m[1]] {
					t.Errorf("panel %q queries %s, which the gateway does not export", p.Title, m[1])
				}
			}
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") {
				t.Errorf("panel %q: unbalanced %s", p.Title, tg.Expr)
			}
		}
	}
	if queried < len(d.Panels) {
		t.Fatalf("%d metric references in %d panels", queried, len(d.Panels))
	}
}
