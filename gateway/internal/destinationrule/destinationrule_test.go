package destinationrule

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

const t0, t1 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"

func dr(ns, name, created, spec string) string {
	return fmt.Sprintf("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: %s, namespace: %s, creationTimestamp: %q}\nspec:\n%s\n", name, ns, created, spec)
}

func build(t *testing.T, y string) *Result {
	t.Helper()
	objs, err := Parse(strings.NewReader(y), "default")
	if err != nil {
		t.Fatal(err)
	}
	return Build(objs, "istio-system")
}

const host = "app-service.env1.svc.cluster.local"

// Istio parity: which DestinationRule and which of its policies apply to a
// call, one row each, with the Istio source it follows.
func TestLookupAsIstio(t *testing.T) {
	for _, tc := range []struct {
		name, cite, yaml string
		subset           string
		port             uint32
		// want: "tls=MODE lb=SIMPLE from=OBJ labels=k=v"; fields absent are nil
		want string
	}{
		{"destination level", "pilot/pkg/networking/core/cluster_traffic_policy.go applyTrafficPolicy",
			dr("env1", "a", t0, "  host: app-service\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, loadBalancer: {simple: ROUND_ROBIN}}"),
			"", 50051, "tls=ISTIO_MUTUAL lb=ROUND_ROBIN from=env1/a"},
		{"port level replaces whole, no inheritance", "pilot/pkg/networking/util/util.go GetPortLevelTrafficPolicy",
			dr("env1", "a", t0, "  host: app-service\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n    loadBalancer: {simple: ROUND_ROBIN}\n    portLevelSettings: [{port: {number: 50051}, loadBalancer: {simple: RANDOM}}]"),
			"", 50051, "tls=<nil> lb=RANDOM from=env1/a"},
		{"other port keeps destination level", "pilot/pkg/networking/util/util.go GetPortLevelTrafficPolicy",
			dr("env1", "a", t0, "  host: app-service\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n    portLevelSettings: [{port: {number: 9000}, tls: {mode: DISABLE}}]"),
			"", 50051, "tls=ISTIO_MUTUAL lb=<nil> from=env1/a"},
		{"subset overrides what it sets", "pilot/pkg/networking/util/util.go MergeSubsetTrafficPolicy, pilot/pkg/model/destination_rule.go MergeTrafficPolicy",
			dr("env1", "a", t0, "  host: app-service\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, loadBalancer: {simple: ROUND_ROBIN}}\n  subsets: [{name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]"),
			"v2", 50051, "tls=ISTIO_MUTUAL lb=RANDOM from=env1/a labels=version=v2"},
		{"subset port level replaces all", "pilot/pkg/model/destination_rule.go MergeTrafficPolicy (hasPortLevel)",
			dr("env1", "a", t0, "  host: app-service\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, loadBalancer: {simple: ROUND_ROBIN}}\n  subsets: [{name: v2, labels: {version: v2}, trafficPolicy: {portLevelSettings: [{port: {number: 50051}, loadBalancer: {simple: RANDOM}}]}}]"),
			"v2", 50051, "tls=<nil> lb=RANDOM from=env1/a labels=version=v2"},
		{"merged: oldest policy, every subset", "pilot/pkg/model/destination_rule.go mergeDestinationRule",
			dr("env1", "b", t1, "  host: app-service.env1.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n  subsets: [{name: v2, labels: {version: v2}}]") +
				dr("env1", "a", t0, "  host: app-service\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n  subsets: [{name: v1, labels: {version: v1}}]"),
			"v2", 0, "tls=<nil> lb=ROUND_ROBIN from=env1/a, env1/b labels=version=v2"},
		{"proxy namespace first", "pilot/pkg/model/push_context.go destinationRule",
			dr("env1", "svc", t0, "  host: app-service.env1.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}") +
				dr("istio-system", "gw", t1, "  host: app-service.env1.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}"),
			"", 0, "tls=<nil> lb=ROUND_ROBIN from=istio-system/gw"},
		{"then the service's namespace", "pilot/pkg/model/push_context.go destinationRule",
			dr("env1", "svc", t0, "  host: app-service\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}") +
				dr("team", "other", t0, "  host: app-service.env1.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}"),
			"", 0, "tls=<nil> lb=RANDOM from=env1/svc"},
		{"not exported to the gateway", "pilot/pkg/model/push_context.go getExportedDestinationRuleFromNamespace",
			dr("env1", "private", t0, "  host: app-service\n  exportTo: [\".\"]\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}"),
			"", 0, "tls=<nil> lb=<nil> from="},
		{"exact host before wildcard", "pilot/pkg/model MostSpecificHostMatch",
			dr("env1", "wide", t0, "  host: \"*.env1.svc.cluster.local\"\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}") +
				dr("env1", "exact", t1, "  host: app-service\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}"),
			"", 0, "tls=<nil> lb=ROUND_ROBIN from=env1/exact"},
		{"wildcard host", "pilot/pkg/model MostSpecificHostMatch",
			dr("env1", "wide", t0, "  host: \"*.env1.svc.cluster.local\"\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}"),
			"", 0, "tls=ISTIO_MUTUAL lb=<nil> from=env1/wide"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := build(t, tc.yaml)
			if len(res.Rejected) > 0 {
				t.Fatalf("rejected: %v", res.Rejected)
			}
			p, err := res.Lookup(host, "env1", tc.subset, tc.port)
			if err != nil {
				t.Fatal(err)
			}
			if got := describe(p); got != tc.want {
				t.Fatalf("policy %q, want %q (%s)", got, tc.want, tc.cite)
			}
		})
	}
}

func describe(p Policy) string {
	s := "tls=<nil>"
	if p.TLS != nil {
		s = "tls=" + p.TLS.Mode
	}
	if p.LoadBalancer != nil {
		s += " lb=" + p.LoadBalancer.Simple
	} else {
		s += " lb=<nil>"
	}
	s += " from=" + p.From
	for k, v := range p.Labels {
		s += " labels=" + k + "=" + v
	}
	return s
}

// A route to a subset no DestinationRule defines has no cluster in Istio
// (Envoy answers 503): Lookup says so.
func TestUndefinedSubset(t *testing.T) {
	res := build(t, dr("env1", "a", t0, "  host: app-service\n  subsets: [{name: v1, labels: {version: v1}}]"))
	if _, err := res.Lookup(host, "env1", "v3", 0); !errors.Is(err, ErrNoSubset) || !strings.Contains(err.Error(), `defines no subset "v3"`) {
		t.Fatalf("v3: %v", err)
	}
	if _, err := res.Lookup("app-service.env2.svc.cluster.local", "env2", "v1", 0); !errors.Is(err, ErrNoSubset) {
		t.Fatalf("no rule at all: %v", err)
	}
}

// Objects Istio refuses, or with fields envgate does not implement, are
// refused whole with the field named.
func TestRefused(t *testing.T) {
	for _, tc := range []struct{ name, cite, spec, want string }{
		{"tcp pool not implemented", "envgate", "  host: app-service\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}", "spec.trafficPolicy.connectionPool.tcp"},
		{"http1 pending not implemented", "envgate", "  host: app-service\n  trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: 10}}}", "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests"},
		{"negative max requests", "pkg/config/validation/validation.go validateConnectionPool", "  host: app-service\n  trafficPolicy: {connectionPool: {http: {http2MaxRequests: -1}}}", "http2 max requests must be non-negative"},
		{"consistent hash not implemented", "envgate", "  host: app-service\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x}}}", "spec.trafficPolicy.loadBalancer.consistentHash"},
		{"workload selector not implemented", "envgate", "  host: app-service\n  workloadSelector: {matchLabels: {app: x}}", "spec.workloadSelector"},
		{"duplicate subsets", "pkg/config/validation/validation.go ValidateDestinationRule", "  host: app-service\n  subsets: [{name: v1, labels: {v: a}}, {name: v1, labels: {v: b}}]", "duplicate subset names: v1"},
		{"subset name", "pkg/config/validation/validation.go validateSubsetName", "  host: app-service\n  subsets: [{name: V_1, labels: {v: a}}]", "subset name is invalid: V_1"},
		{"mutual without key", "pkg/config/validation/agent/validation.go ValidateTLS", "  host: app-service\n  trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: c.pem}}", "private key required for mutual tls"},
		{"ejection percent", "pkg/config/validation/validation.go validateOutlierDetection", "  host: app-service\n  trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}", "percentage 150 is not in range 0..100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := build(t, dr("env1", "a", t0, tc.spec))
			if why := res.Rejected["env1/a"]; !strings.Contains(why, tc.want) {
				t.Fatalf("rejected %q, want %q (%s)", why, tc.want, tc.cite)
			}
			if p, _ := res.Lookup(host, "env1", "", 0); p.From != "" {
				t.Fatalf("a refused object applies: %+v", p)
			}
		})
	}
}
