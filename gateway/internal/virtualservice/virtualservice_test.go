package virtualservice

import (
	"encoding/json"
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/internal/paritytest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func parse(t *testing.T, yaml string) []*Object {
	t.Helper()
	objs, err := Parse(strings.NewReader(yaml), "default")
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func table(t *testing.T, yaml string) (*route.Table, *Result) {
	t.Helper()
	res := Build(parse(t, yaml), Options{Gateway: paritytest.Gateway, ProxyNamespace: paritytest.ProxyNamespace})
	return route.NewHostTable(res.Hosts), res
}

// req is a call to path with the header name, value pairs.
func req(path, authority string, headers ...string) *route.Request {
	r := &route.Request{Path: path, Authority: authority, Headers: map[string][]string{}}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers[headers[i]] = append(r.Headers[headers[i]], headers[i+1])
	}
	return r
}

// Objects not bound to the gateway are listed with the reason.
func TestUnboundObjectsAreReported(t *testing.T) {
	_, res := table(t, paritytest.InNS("other", paritytest.VS("a", paritytest.T0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]"))+paritytest.BoundTo("mesh", paritytest.VS("b", paritytest.T0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")))
	if why := res.Unbound["other/a"]; !strings.Contains(why, "resolve to [other/common-istio-gateway], not default/common-istio-gateway") {
		t.Fatalf("other/a: %q", why)
	}
	if why := res.Unbound["default/b"]; !strings.Contains(why, "[mesh]") {
		t.Fatalf("default/b: %q", why)
	}
}

// The seed's VirtualServices, as k8s/overlays/istio renders them for env1
// and env2, route exactly as in the seed.
func TestSeedVirtualServices(t *testing.T) {
	b, err := os.ReadFile("../../../k8s/istio/virtualservices.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tbl, res := table(t, string(b))
	if len(res.Issues) != 0 || len(res.Rejected) != 0 {
		t.Fatalf("issues %v, rejected %v", res.Issues, res.Rejected)
	}
	for env, want := range map[string]string{"env1": "app-service.env1.svc.cluster.local:50051", "env2": "app-service.env2.svc.cluster.local:50051"} {
		r, ok := tbl.Route(req("/echo.EchoService/Call", "gw.example:443", "env", env))
		if !ok || r.Action.Destinations[0].String() != want {
			t.Fatalf("%s: %v %v", env, r, ok)
		}
	}
	for _, h := range [][]string{{}, {"env", "env3"}, {"env", "ENV1"}, {"env", "env1", "env", "env2"}} {
		if r, ok := tbl.Route(req("/echo.EchoService/Call", "gw", h...)); ok {
			t.Fatalf("%v routed to %v", h, r.Source)
		}
	}
}

// The Istio parity table (internal/paritytest), each row citing the Istio
// or Envoy source it follows, against the merge; the gateway's tests run
// the same rows through real calls and `gateway explain`.
func TestIstioParity(t *testing.T) {
	for _, row := range paritytest.Rows {
		t.Run(row.Name, func(t *testing.T) {
			tbl, res := table(t, row.YAML)
			if len(res.Rejected) > 0 {
				t.Fatalf("rejected: %v", res.Rejected)
			}
			r, ok := tbl.Route(req(row.Req.Method, row.Req.Authority, row.Req.Headers...))
			got := ""
			if ok {
				got = r.Action.Destinations[0].Namespace
			}
			if got != row.Want {
				t.Fatalf("routed to %q, want %q (%s)", got, row.Want, row.Cite)
			}
		})
	}
}

// Destination hosts resolve as in Istio (pilot/pkg/model/config.go
// ResolveShortnameToFQDN, then the registry by host name): a short name is
// a service of the object's namespace, the FQDN that service; any other
// host, name.namespace included, is not expanded and names no service.
func TestDestinationHosts(t *testing.T) {
	for host, want := range map[string]string{
		"app-service":                            "app-service.default.svc.cluster.local",
		"app-service.env1":                       "app-service.env1 (no such service)",
		"app-service.env1.svc.cluster.local":     "app-service.env1.svc.cluster.local",
		"app-service.env1.svc.cluster.local:xxx": "app-service.env1.svc.cluster.local:xxx (no such service)",
		"api.example.com":                        "api.example.com (no such service)",
	} {
		d := destinationOf(RouteDest{Destination: struct {
			Host string `json:"host"`
			Port *struct {
				Number uint32 `json:"number"`
			} `json:"port"`
			Subset string `json:"subset"`
		}{Host: host}}, "default")
		if d.String() != want {
			t.Errorf("%s: %v, want %q", host, d, want)
		}
	}
}

// Weights: share = weight / sum, weight 0 gets nothing, within 2% over
// 100,000 picks from a fixed seed.
func TestWeights(t *testing.T) {
	tbl, _ := table(t, paritytest.VS("a", paritytest.T0, `  - route:
    - {destination: {host: svc.a.svc.cluster.local}, weight: 70}
    - {destination: {host: svc.b.svc.cluster.local}, weight: 30}
    - {destination: {host: svc.c.svc.cluster.local}, weight: 0}`))
	r, _ := tbl.Route(req("/x.Y/Z", "h"))
	rng := rand.New(rand.NewPCG(1, 2))
	counts := map[string]int{}
	const n = 100_000
	for range n {
		d, _ := r.Action.Pick(rng.Float64())
		counts[d.Namespace]++
	}
	if counts["c"] != 0 || abs(float64(counts["a"])/n-0.7) > 0.02 || abs(float64(counts["b"])/n-0.3) > 0.02 {
		t.Fatalf("distribution %v", counts)
	}
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

// Unimplemented fields are reported by name; those that would change where
// a call goes reject the whole object.
func TestUnimplementedFields(t *testing.T) {
	_, res := table(t, paritytest.VS("cors", paritytest.T0, `  - corsPolicy: {allowOrigins: [{exact: "*"}]}
    route: [{destination: {host: svc.a.svc.cluster.local}}]`)+paritytest.VS("fault", paritytest.T0, `  - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: svc.b.svc.cluster.local}}]`)+paritytest.VS("scheme", paritytest.T0, `  - match: [{scheme: {exact: https}}]
    route: [{destination: {host: svc.c.svc.cluster.local}}]`))
	want := map[string]bool{
		"default/cors: spec.http[0].corsPolicy is not implemented: ignored":                                         true,
		"default/fault: spec.http[0].fault is not implemented and would change routing: object rejected":            true,
		"default/scheme: spec.http[0].match[0].scheme is not implemented and would change routing: object rejected": true,
	}
	for _, is := range res.Issues {
		if !want[is.String()] {
			t.Errorf("unexpected issue %q", is)
		}
		delete(want, is.String())
	}
	if len(want) > 0 {
		t.Errorf("missing issues %v", want)
	}
	if len(res.Applied) != 1 || res.Applied[0] != "default/cors" || len(res.Rejected) != 2 {
		t.Fatalf("applied %v, rejected %v", res.Applied, res.Rejected)
	}
}

// Golden files: VirtualService YAML in, routing table out. Run with
// -update to rewrite them after a deliberate change.
func TestGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.yaml")
	if len(files) == 0 {
		t.Fatal("no golden inputs")
	}
	for _, in := range files {
		t.Run(filepath.Base(in), func(t *testing.T) {
			b, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			_, res := table(t, string(b))
			got, err := json.MarshalIndent(goldenView(res), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden := strings.TrimSuffix(in, ".yaml") + ".golden.json"
			if *update {
				if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if string(want) != string(got)+"\n" {
				t.Errorf("%s differs from the table built now:\n%s", golden, got)
			}
		})
	}
}

func goldenView(res *Result) any {
	type rule struct {
		Source  string
		Hosts   []string `json:",omitempty"`
		Matches []string `json:",omitempty"`
		Action  route.Action
	}
	type host struct {
		Domain string
		Rules  []rule
	}
	var hosts []host
	for _, h := range res.Hosts {
		var rules []rule
		for _, r := range h.Rules {
			var ms []string
			for _, m := range r.Matches {
				ms = append(ms, m.String())
			}
			rules = append(rules, rule{Source: r.Source, Hosts: r.Hosts, Matches: ms, Action: r.Action})
		}
		hosts = append(hosts, host{h.Domain, rules})
	}
	var issues []string
	for _, is := range res.Issues {
		issues = append(issues, is.String())
	}
	return map[string]any{"virtualHosts": hosts, "applied": res.Applied, "rejected": res.Rejected, "issues": issues}
}

// FuzzMatch checks the matcher against a plain reference: join the header
// values, then compare as the kind says.
func FuzzMatch(f *testing.F) {
	f.Add(0, "env1", "env1", "", 1)
	f.Add(1, "pr-", "pr-1", "x", 2)
	f.Add(2, "a.*", "abc", "", 1)
	f.Add(1, "a,", "a", "b", 2)
	f.Add(0, "", "", "", 0)
	f.Fuzz(func(t *testing.T, kind int, pattern, v1, v2 string, n int) {
		kind = ((kind % 4) + 4) % 4
		var m route.StringMatch
		switch route.MatchKind(kind) {
		case route.Regex:
			var err error
			if m, err = route.NewRegex(pattern); err != nil {
				return
			}
		default:
			m = route.StringMatch{Kind: route.MatchKind(kind), Value: pattern}
		}
		values := []string{v1, v2}[:max(0, min(n, 2))]
		got := m.MatchValues(values)
		var want bool
		if len(values) > 0 {
			joined := strings.Join(values, ",")
			switch route.MatchKind(kind) {
			case route.Exact:
				want = joined == pattern
			case route.Prefix:
				want = strings.HasPrefix(joined, pattern)
			case route.Regex:
				want = m.MatchString(joined)
			case route.Present:
				want = true
			}
		}
		if got != want {
			t.Fatalf("%v on %q: %v, reference %v", m, values, got, want)
		}
	})
}

// Objects Istio's admission webhook refuses are refused, the whole object,
// with a message naming it and the field (pkg/config/validation/
// validation.go). The same Build runs at start, in the live watch and in
// explain, so all three refuse alike.
func TestValidationAsIstio(t *testing.T) {
	for _, r := range paritytest.Refusals {
		t.Run(r.Name, func(t *testing.T) {
			_, res := table(t, r.YAML)
			if why := res.Rejected["default/a"]; !strings.Contains(why, r.Why) {
				t.Fatalf("rejected: %q, want %q (%s)", why, r.Why, r.Cite)
			}
		})
	}
	// A status code is a valid retryOn, as are Envoy's gRPC conditions.
	_, res := table(t, paritytest.VS("a", paritytest.T0, "  - route: [{destination: {host: svc.a.svc.cluster.local}}]\n    retries: {attempts: 2, retryOn: \"503,unavailable,gateway-error\"}"))
	if len(res.Rejected) != 0 {
		t.Fatalf("rejected: %v", res.Rejected)
	}
}

// The HTTP rows of the parity table against the merge: the decision both
// fronts get (the gateway's tests run the rows through real requests).
func TestIstioParityHTTP(t *testing.T) {
	for _, row := range paritytest.HTTPRows {
		t.Run(row.Name, func(t *testing.T) {
			tbl, res := table(t, row.YAML)
			if len(res.Rejected) > 0 {
				t.Fatalf("rejected: %v", res.Rejected)
			}
			r := req(row.Req.Path, row.Req.Authority, row.Req.Headers...)
			r.Method = row.Req.Method
			dec, err := tbl.Decide(r, 0)
			w := row.Want
			switch {
			case w.Status == 404:
				var ref *route.Refusal
				if !errors.As(err, &ref) || !ref.NoRoute {
					t.Fatalf("decision %+v, %v; want no route (%s)", dec, err, row.Cite)
				}
			case err != nil:
				t.Fatalf("refused: %v (%s)", err, row.Cite)
			case w.Env != "" && dec.Env != w.Env:
				t.Fatalf("routed to %q, want %q (%s)", dec.Env, w.Env, row.Cite)
			case w.Location != "" && (dec.Action().Redirect == nil || dec.Action().Redirect.Code != 0 && dec.Action().Redirect.Code != w.Status):
				t.Fatalf("redirect %+v, want a %d (%s)", dec.Action().Redirect, w.Status, row.Cite)
			case w.Env == "" && w.Location == "" && (dec.Action().DirectResponse == nil || dec.Action().DirectResponse.Status != w.Status || dec.Action().DirectResponse.Body != w.Body):
				t.Fatalf("direct response %+v, want %d %q (%s)", dec.Action().DirectResponse, w.Status, w.Body, row.Cite)
			}
		})
	}
	for _, r := range paritytest.HTTPRefusals {
		t.Run(r.Name, func(t *testing.T) {
			_, res := table(t, r.YAML)
			if why := res.Rejected["default/a"]; !strings.Contains(why, r.Why) {
				t.Fatalf("rejected: %q, want %q (%s)", why, r.Why, r.Cite)
			}
		})
	}
}
