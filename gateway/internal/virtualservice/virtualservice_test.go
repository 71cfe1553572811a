package virtualservice

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envgate/envgate/gateway/internal/route"
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
	res := Build(parse(t, yaml), Options{Gateway: "default/common-istio-gateway", ProxyNamespace: "istio-system"})
	return route.NewHostTable(res.Hosts), res
}

// vs renders one VirtualService bound to the seed's gateway.
func vs(name, created, http string) string {
	return fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s, namespace: default, creationTimestamp: "%s"}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
%s
`, name, created, http)
}

// vsHosts is vs with its own hosts.
func vsHosts(name, created, hosts, http string) string {
	return strings.Replace(vs(name, created, http), `hosts: ["*"]`, "hosts: "+hosts, 1)
}

// inNS moves an object to namespace ns.
func inNS(ns, y string) string { return strings.Replace(y, "namespace: default", "namespace: "+ns, 1) }

// exportTo sets an object's spec.exportTo.
func exportTo(list, y string) string {
	return strings.Replace(y, "  gateways:", "  exportTo: "+list+"\n  gateways:", 1)
}

// gw binds an object to g instead of common-istio-gateway.
func gw(g, y string) string {
	return strings.Replace(y, "gateways: [common-istio-gateway]", "gateways: ["+g+"]", 1)
}

func req(path, authority string, headers ...string) *route.Request {
	r := &route.Request{Path: path, Authority: authority, Headers: map[string][]string{}}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers[headers[i]] = append(r.Headers[headers[i]], headers[i+1])
	}
	return r
}

const t0, t1 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"

// Objects not bound to the gateway are listed with the reason.
func TestUnboundObjectsAreReported(t *testing.T) {
	_, res := table(t, inNS("other", vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]"))+gw("mesh", vs("b", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")))
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
	b, err := os.ReadFile("../../../k8s/overlays/istio/virtualservices.yaml")
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

// Documented Istio behaviours, one row each. Sources: Istio reference,
// networking.istio.io VirtualService (istio.io/latest/docs/reference/config/
// networking/virtual-service/), and Envoy's route matching
// (envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto).
func TestIstioParity(t *testing.T) {
	one := func(match, dest string) string {
		return fmt.Sprintf("  - match:\n%s\n    route: [{destination: {host: %s}}]", match, dest)
	}
	for name, tc := range map[string]struct {
		yaml string
		req  *route.Request
		want string // destination namespace, "" for no route
	}{
		// HTTPMatchRequest.headers: exact, prefix, regex (RE2 full match).
		"header exact":             {vs("a", t0, one(`    - headers: {env: {exact: env1}}`, "svc.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "env1"), "env1"},
		"header prefix":            {vs("a", t0, one(`    - headers: {env: {prefix: pr-}}`, "svc.prs.svc.cluster.local")), req("/x.Y/Z", "h", "env", "pr-42"), "prs"},
		"header regex full match":  {vs("a", t0, one(`    - headers: {env: {regex: "env[0-9]"}}`, "svc.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "env1"), "env1"},
		"header regex not partial": {vs("a", t0, one(`    - headers: {env: {regex: "env[0-9]"}}`, "svc.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "xenv1x"), ""},
		// "headers: {x: {}}" matches when the header is present, any value.
		"header presence":        {vs("a", t0, one(`    - headers: {x-debug: {}}`, "svc.dbg.svc.cluster.local")), req("/x.Y/Z", "h", "x-debug", ""), "dbg"},
		"header presence absent": {vs("a", t0, one(`    - headers: {x-debug: {}}`, "svc.dbg.svc.cluster.local")), req("/x.Y/Z", "h"), ""},
		// Header names are case-insensitive, values case-sensitive.
		"header name case":  {vs("a", t0, one(`    - headers: {Env: {exact: env1}}`, "svc.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "env1"), "env1"},
		"header value case": {vs("a", t0, one(`    - headers: {env: {exact: env1}}`, "svc.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "Env1"), ""},
		// Several values are joined with "," (Envoy).
		"joined values": {vs("a", t0, one(`    - headers: {env: {exact: "a,b"}}`, "svc.ab.svc.cluster.local")), req("/x.Y/Z", "h", "env", "a", "env", "b"), "ab"},
		// withoutHeaders: the rule applies when the header does not match;
		// an absent header does not match, so the rule applies.
		"withoutHeaders other value": {vs("a", t0, one(`    - withoutHeaders: {env: {exact: prod}}`, "svc.np.svc.cluster.local")), req("/x.Y/Z", "h", "env", "dev"), "np"},
		"withoutHeaders absent":      {vs("a", t0, one(`    - withoutHeaders: {env: {exact: prod}}`, "svc.np.svc.cluster.local")), req("/x.Y/Z", "h"), "np"},
		"withoutHeaders equal":       {vs("a", t0, one(`    - withoutHeaders: {env: {exact: prod}}`, "svc.np.svc.cluster.local")), req("/x.Y/Z", "h", "env", "prod"), ""},
		// Istio 1.22 and later set Envoy's treat_missing_header_as_empty on
		// withoutHeaders (route.go translateHeaderMatch): an absent header
		// is the empty string, which regex ".*" matches, so the rule does
		// not apply; a presence match still sees it absent.
		"withoutHeaders absent is empty":    {vs("a", t0, one(`    - withoutHeaders: {env: {regex: ".*"}}`, "svc.np.svc.cluster.local")), req("/x.Y/Z", "h"), ""},
		"withoutHeaders absent presence":    {vs("a", t0, one(`    - withoutHeaders: {env: {}}`, "svc.np.svc.cluster.local")), req("/x.Y/Z", "h"), "np"},
		"withoutHeaders present value only": {vs("a", t0, one(`    - withoutHeaders: {env: {regex: "prod.*"}}`, "svc.np.svc.cluster.local")), req("/x.Y/Z", "h"), "np"},
		// uri on the gRPC path /package.Service/Method.
		"uri exact":  {vs("a", t0, one(`    - uri: {exact: /echo.EchoService/Call}`, "svc.c.svc.cluster.local")), req("/echo.EchoService/Call", "h"), "c"},
		"uri prefix": {vs("a", t0, one(`    - uri: {prefix: /echo.EchoService/}`, "svc.c.svc.cluster.local")), req("/echo.EchoService/BidiStream", "h"), "c"},
		"uri regex":  {vs("a", t0, one(`    - uri: {regex: "/echo\\.EchoService/(Call|ServerStream)"}`, "svc.c.svc.cluster.local")), req("/echo.EchoService/ClientStream", "h"), ""},
		"authority":  {vs("a", t0, one(`    - authority: {prefix: api.}`, "svc.api.svc.cluster.local")), req("/x.Y/Z", "api.example.com"), "api"},
		// Conditions in one block are ANDed, blocks are ORed.
		"AND within a block": {vs("a", t0, one("    - headers: {env: {exact: env1}}\n      uri: {prefix: /echo.}", "svc.env1.svc.cluster.local")), req("/other.S/M", "h", "env", "env1"), ""},
		"OR across blocks":   {vs("a", t0, one("    - headers: {env: {exact: env1}}\n    - uri: {prefix: /echo.}", "svc.env1.svc.cluster.local")), req("/echo.S/M", "h", "env", "env9"), "env1"},
		// Rules in order, first match wins.
		"first match wins": {vs("a", t0, one(`    - uri: {prefix: /echo.}`, "svc.first.svc.cluster.local")+"\n"+one(`    - headers: {env: {exact: env1}}`, "svc.second.svc.cluster.local")), req("/echo.S/M", "h", "env", "env1"), "first"},
		// A rule without match takes everything.
		"no match is catch-all": {vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]"), req("/any.S/M", "h"), "all"},
		// Objects merge oldest first; the same time breaks ties by name.
		"older object first":            {vs("b", t0, one(`    - uri: {prefix: /}`+"\n      headers: {env: {exact: e}}", "svc.older.svc.cluster.local")) + vs("a", t1, one(`    - headers: {env: {exact: e}}`, "svc.newer.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "older"},
		"tie broken by name":            {vs("b", t0, one(`    - headers: {env: {exact: e}}`, "svc.b.svc.cluster.local")) + vs("a", t0, one(`    - headers: {env: {exact: e}}`, "svc.a.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "a"},
		"catch-all moved last":          {vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]") + vs("b", t1, one(`    - headers: {env: {exact: e}}`, "svc.e.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "e"},
		"catch-all prefix / moved last": {vs("a", t0, one(`    - uri: {prefix: /}`, "svc.all.svc.cluster.local")) + vs("b", t1, one(`    - headers: {env: {exact: e}}`, "svc.e.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "e"},
		// hosts: the object applies to these authorities only.
		"hosts exclude": {strings.Replace(vs("a", t0, one(`    - headers: {env: {exact: e}}`, "svc.e.svc.cluster.local")), `hosts: ["*"]`, `hosts: ["api.example.com"]`, 1), req("/x.Y/Z", "other.example.com:443", "env", "e"), ""},
		"hosts include": {strings.Replace(vs("a", t0, one(`    - headers: {env: {exact: e}}`, "svc.e.svc.cluster.local")), `hosts: ["*"]`, `hosts: ["*.example.com"]`, 1), req("/x.Y/Z", "api.example.com:443", "env", "e"), "e"},
		// Virtual hosts. Istio makes one per host name of the bound objects,
		// each with the routes of every object naming it
		// (pilot/pkg/networking/core/gateway.go buildGatewayHTTPRouteConfig,
		// vHostDedupMap); Envoy routes a request by exactly one, chosen by
		// its authority: exact, then the longest suffix wildcard, then "*",
		// case-insensitively and without the port
		// (source/common/router/config_impl.cc RouteMatcher::findVirtualHost).
		"specific host before *": {vs("a", t0, one(`    - headers: {env: {exact: e}}`, "svc.star.svc.cluster.local")) +
			vsHosts("b", t1, `["api.example.com"]`, one(`    - headers: {env: {exact: e}}`, "svc.api.svc.cluster.local")), req("/x.Y/Z", "api.example.com:443", "env", "e"), "api"},
		"* for other hosts": {vs("a", t0, one(`    - headers: {env: {exact: e}}`, "svc.star.svc.cluster.local")) +
			vsHosts("b", t1, `["api.example.com"]`, one(`    - headers: {env: {exact: e}}`, "svc.api.svc.cluster.local")), req("/x.Y/Z", "web.example.com", "env", "e"), "star"},
		"no fall-through to *": {vsHosts("b", t0, `["api.example.com"]`, one(`    - headers: {env: {exact: other}}`, "svc.api.svc.cluster.local")) +
			vs("a", t1, "  - route: [{destination: {host: svc.star.svc.cluster.local}}]"), req("/x.Y/Z", "api.example.com", "env", "e"), ""},
		"longest suffix wildcard": {vsHosts("a", t0, `["*.example.com"]`, one(`    - headers: {env: {exact: e}}`, "svc.wide.svc.cluster.local")) +
			vsHosts("b", t1, `["*.api.example.com"]`, one(`    - headers: {env: {exact: e}}`, "svc.deep.svc.cluster.local")), req("/x.Y/Z", "v1.api.example.com", "env", "e"), "deep"},
		"wildcard needs a label":  {vsHosts("a", t0, `["*.example.com"]`, one(`    - headers: {env: {exact: e}}`, "svc.wide.svc.cluster.local")), req("/x.Y/Z", "example.com", "env", "e"), ""},
		"authority case and port": {vsHosts("a", t0, `["API.example.com"]`, one(`    - headers: {env: {exact: e}}`, "svc.api.svc.cluster.local")), req("/x.Y/Z", "Api.Example.COM:8443", "env", "e"), "api"},
		// A host without dots is a service of the object's namespace
		// (pilot/pkg/model/config.go ResolveShortnameToFQDN).
		"short host is a service FQDN": {vsHosts("a", t0, `["app"]`, one(`    - headers: {env: {exact: e}}`, "svc.app.svc.cluster.local")), req("/x.Y/Z", "app.default.svc.cluster.local", "env", "e"), "app"},
		"short host not as written":    {vsHosts("a", t0, `["app"]`, one(`    - headers: {env: {exact: e}}`, "svc.app.svc.cluster.local")), req("/x.Y/Z", "app", "env", "e"), ""},
		// Catch-alls (route.go): one Envoy route per match block
		// (BuildHTTPRoutesForVirtualService); only a catch-all block moves
		// to the end of its virtual host (SortVHostRoutes, IsCatchAllRoute:
		// prefix "/" or regex ".*", no header), the rule's other blocks
		// keep their place; rules after a catch-all route are dropped.
		"catch-all block split": {vs("a", t0, one("    - headers: {env: {exact: e}}\n    - uri: {prefix: /}", "svc.a.svc.cluster.local")) +
			vs("b", t1, one(`    - headers: {env: {exact: e}}`, "svc.b.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "a"},
		"catch-all block still last": {vs("a", t0, one("    - headers: {env: {exact: e}}\n    - uri: {prefix: /}", "svc.a.svc.cluster.local")) +
			vs("b", t1, one(`    - headers: {env: {exact: f}}`, "svc.b.svc.cluster.local")), req("/x.Y/Z", "h", "env", "f"), "b"},
		"regex .* is catch-all":           {vs("a", t0, one(`    - uri: {regex: ".*"}`, "svc.all.svc.cluster.local")) + vs("b", t1, one(`    - headers: {env: {exact: e}}`, "svc.e.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "e"},
		"rules after a catch-all dropped": {vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]\n"+one(`    - headers: {env: {exact: e}}`, "svc.e.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "all"},
		// spec.gateways resolve as Istio resolves them
		// (pilot/pkg/model/config.go resolveGatewayName): a short
		// name is in the object's namespace, "./name" too, "ns/name" as
		// written, "name.ns.svc.cluster.local" is ns/name; the gateway
		// here is default/common-istio-gateway.
		"gateway short name elsewhere": {inNS("other", vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
		"gateway ns/name":              {inNS("other", gw("default/common-istio-gateway", vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]"))), req("/x.Y/Z", "h"), "all"},
		"gateway ./name":               {gw("./common-istio-gateway", vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), "all"},
		"gateway legacy FQDN":          {inNS("other", gw("common-istio-gateway.default.svc.cluster.local", vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]"))), req("/x.Y/Z", "h"), "all"},
		"gateway mesh":                 {gw("mesh", vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
		// spec.exportTo: the object must be visible in the gateway's
		// (proxy's) namespace, istio-system here (push_context.go).
		"exportTo absent":       {vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]"), req("/x.Y/Z", "h"), "all"},
		"exportTo *":            {exportTo(`["*"]`, vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), "all"},
		"exportTo . elsewhere":  {exportTo(`["."]`, vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
		"exportTo gateway's ns": {exportTo(`["istio-system"]`, vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), "all"},
		"exportTo other ns":     {exportTo(`["team-a"]`, vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
		"exportTo ~":            {exportTo(`["~"]`, vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
		// Objects of another gateway are not merged.
		"other gateway": {strings.Replace(vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]"), "common-istio-gateway", "mesh", 1), req("/x.Y/Z", "h"), ""},
	} {
		t.Run(name, func(t *testing.T) {
			tbl, res := table(t, tc.yaml)
			if len(res.Rejected) > 0 {
				t.Fatalf("rejected: %v", res.Rejected)
			}
			r, ok := tbl.Route(tc.req)
			got := ""
			if ok {
				got = r.Action.Destinations[0].Namespace
			}
			if got != tc.want {
				t.Fatalf("routed to %q, want %q", got, tc.want)
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
	tbl, _ := table(t, vs("a", t0, `  - route:
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
	_, res := table(t, vs("cors", t0, `  - corsPolicy: {allowOrigins: [{exact: "*"}]}
    route: [{destination: {host: svc.a.svc.cluster.local}}]`)+vs("fault", t0, `  - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: svc.b.svc.cluster.local}}]`)+vs("method", t0, `  - match: [{method: {exact: GET}}]
    route: [{destination: {host: svc.c.svc.cluster.local}}]`))
	want := map[string]bool{
		"default/cors: spec.http[0].corsPolicy is not implemented: ignored":                                         true,
		"default/fault: spec.http[0].fault is not implemented and would change routing: object rejected":            true,
		"default/method: spec.http[0].match[0].method is not implemented and would change routing: object rejected": true,
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
	one := func(match, dest string) string {
		return fmt.Sprintf("  - match:\n%s\n    route: [{destination: {host: %s}}]", match, dest)
	}
	for name, tc := range map[string]struct{ yaml, want string }{
		// ValidateVirtualService: "virtual service must have at least one host".
		"no hosts": {strings.Replace(vs("a", t0, "  - route: [{destination: {host: svc.all.svc.cluster.local}}]"), `hosts: ["*"]`, `hosts: []`, 1),
			"spec.hosts is empty"},
		// validateHTTPRouteDestinations: "total destination weight = 0".
		"all weights zero": {vs("a", t0, "  - route: [{destination: {host: svc.a.svc.cluster.local}, weight: 0}, {destination: {host: svc.b.svc.cluster.local}, weight: 0}]"),
			"total destination weight = 0"},
		// validateHTTPRetry: retryOn values from supportedRetryOnPolicies.
		"unknown retryOn": {vs("a", t0, "  - route: [{destination: {host: svc.a.svc.cluster.local}}]\n    retries: {attempts: 2, retryOn: \"5xx,sometimes\"}"),
			`"sometimes" is not a retry policy`},
		// validateHTTPRetry: "attempts cannot be negative", and
		// ValidateDuration on perTryTimeout.
		"negative attempts": {vs("a", t0, "  - route: [{destination: {host: svc.a.svc.cluster.local}}]\n    retries: {attempts: -1}"),
			"attempts cannot be negative"},
		"perTryTimeout under 1ms": {vs("a", t0, "  - route: [{destination: {host: svc.a.svc.cluster.local}}]\n    retries: {attempts: 2, perTryTimeout: 500us}"),
			"duration must be greater than 1ms"},
		"perTryTimeout finer than ms": {vs("a", t0, "  - route: [{destination: {host: svc.a.svc.cluster.local}}]\n    retries: {attempts: 2, perTryTimeout: 1500us}"),
			"only durations to ms precision are supported"},
		// validateStringMatch: "prefix string match should not be empty".
		"empty uri prefix": {vs("a", t0, one(`    - uri: {prefix: ""}`, "svc.a.svc.cluster.local")),
			"match[0].uri: prefix string match should not be empty"},
	} {
		t.Run(name, func(t *testing.T) {
			_, res := table(t, tc.yaml)
			if why := res.Rejected["default/a"]; !strings.Contains(why, tc.want) {
				t.Fatalf("rejected: %q, want %q", why, tc.want)
			}
		})
	}
	// A status code is a valid retryOn, as are Envoy's gRPC conditions.
	_, res := table(t, vs("a", t0, "  - route: [{destination: {host: svc.a.svc.cluster.local}}]\n    retries: {attempts: 2, retryOn: \"503,unavailable,gateway-error\"}"))
	if len(res.Rejected) != 0 {
		t.Fatalf("rejected: %v", res.Rejected)
	}
}
