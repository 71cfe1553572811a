package main

import (
	"context"
	"encoding/json"
	"fmt"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/virtualservice"
	"github.com/envgate/envgate/proto/echopb"
)

// vsGateway runs a gateway routing by the VirtualServices in yaml, with
// static endpoints per namespace.
func vsGateway(t *testing.T, yaml string, endpoints map[string][]string, modify ...func(*config.Config)) *runningGateway {
	t.Helper()
	return startGateway(t, vsConfig(t, yaml, endpoints, modify...), nil)
}

// vsConfig is a gateway configuration routing by the VirtualServices in
// yaml, with static endpoints per environment or "service.namespace".
func vsConfig(t *testing.T, yaml string, endpoints map[string][]string, modify ...func(*config.Config)) *config.Config {
	t.Helper()
	f := filepath.Join(t.TempDir(), "vs.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := unvalidatedConfig(endpoints)
	cfg.Routing.VirtualServices = &config.VirtualServices{Files: []string{f}}
	for _, m := range modify {
		m(cfg)
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestSeedVirtualServicesThroughGateway(t *testing.T) {
	b1, b2 := startBackend(t, "env1"), startBackend(t, "env2")
	y, err := os.ReadFile("../k8s/istio/virtualservices.yaml")
	if err != nil {
		t.Fatal(err)
	}
	gw := vsGateway(t, string(y), map[string][]string{"env1": {b1.addr}, "env2": {b2.addr}})
	c := echoClient(t, gw.Addrs()[0])
	for env, b := range map[string]*backend{"env1": b1, "env2": b2} {
		resp, err := c.Call(withEnv(testCtx(t), env), &echopb.EchoRequest{IncludeDetails: true})
		if err != nil || resp.GetServer() != b.addr {
			t.Fatalf("%s: %v %v", env, resp.GetServer(), err)
		}
	}
	_, err = c.Call(withEnv(testCtx(t), "env3"), &echopb.EchoRequest{})
	if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "no route matched /echo.EchoService/Call") {
		t.Fatalf("env3: %v", err)
	}

	// /explain says which rule matched and why the earlier did not.
	var e explanation
	if err := json.Unmarshal([]byte(scrape(t, gw, "/explain?method=/echo.EchoService/Call&header=env:env2")), &e); err != nil {
		t.Fatal(err)
	}
	if len(e.Steps) != 2 || e.Steps[0].Matched || !strings.Contains(e.Steps[0].Why, `header env is "env2", want exact "env1"`) ||
		!e.Steps[1].Matched || !strings.HasPrefix(e.Decision, "route to app-service.env2.svc.cluster.local:50051") {
		t.Fatalf("explain: %+v", e)
	}
}

const vsHead = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s, namespace: default}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
`

func TestVirtualServiceActionsThroughGateway(t *testing.T) {
	a, b, slow := startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "slow")
	yaml := fmt.Sprintf(vsHead, "actions") + `
    - match: [{headers: {x-split: {}}}]
      route:
        - {destination: {host: app-service.a.svc.cluster.local}, weight: 75}
        - {destination: {host: app-service.b.svc.cluster.local}, weight: 25}
    - match: [{uri: {exact: /echo.EchoService/Call}, headers: {x-timeout: {}}}]
      timeout: 200ms
      route: [{destination: {host: app-service.slow.svc.cluster.local}}]
    - match: [{headers: {env: {exact: a}}}]
      headers:
        request: {set: {x-routed-by: envgate, x-replaced: new}, add: {x-added: one}, remove: [x-secret]}
        response: {set: {x-served-by: a}, remove: [x-backend-only]}
      route: [{destination: {host: app-service.a.svc.cluster.local}}]
`
	gw := vsGateway(t, yaml, map[string][]string{"a": {a.addr}, "b": {b.addr}, "slow": {slow.addr}})
	c := echoClient(t, gw.Addrs()[0])

	t.Run("weights", func(t *testing.T) {
		n := map[string]int{}
		for range 400 {
			resp, err := c.Call(metadata.AppendToOutgoingContext(testCtx(t), "x-split", "1"), &echopb.EchoRequest{IncludeDetails: true})
			if err != nil {
				t.Fatal(err)
			}
			n[resp.GetServer()]++
		}
		// 75/25 of 400 is 300/100; a binomial spread of 3 sigma is about 26.
		if n[a.addr] < 270 || n[a.addr] > 330 || n[a.addr]+n[b.addr] != 400 {
			t.Fatalf("split %d / %d, want about 300 / 100", n[a.addr], n[b.addr])
		}
	})
	t.Run("route timeout", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(testCtx(t), "x-timeout", "1")
		_, err := c.Call(ctx, &echopb.EchoRequest{SleepMs: 5000})
		if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "route's timeout of 200ms expired") {
			t.Fatalf("got %v", err)
		}
		// A client deadline shorter than the route's is the client's.
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if _, err := c.Call(short, &echopb.EchoRequest{SleepMs: 5000}); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("client deadline: %v", err)
		}
	})
	t.Run("header operations", func(t *testing.T) {
		ctx := metadata.NewOutgoingContext(testCtx(t), metadata.Pairs("env", "a", "x-secret", "s", "x-replaced", "old", "x-added", "zero"))
		var hdr metadata.MD
		resp, err := c.Call(ctx, &echopb.EchoRequest{IncludeDetails: true, ResponseHeaders: map[string][]byte{"x-backend-only": []byte("1")}}, grpc.Header(&hdr))
		if err != nil {
			t.Fatal(err)
		}
		md := resp.GetRequestMetadata()
		for k, want := range map[string]string{"x-routed-by": "envgate", "x-replaced": "new", "x-added": "zero,one"} {
			if string(md[k]) != want {
				t.Errorf("backend saw %s=%q, want %q", k, md[k], want)
			}
		}
		if _, ok := md["x-secret"]; ok {
			t.Error("x-secret was not removed")
		}
		if got := hdr.Get("x-served-by"); len(got) != 1 || got[0] != "a" {
			t.Errorf("response x-served-by %v", got)
		}
		if got := hdr.Get("x-backend-only"); len(got) != 0 {
			t.Errorf("response x-backend-only not removed: %v", got)
		}
	})
}

// Routing follows the cluster's VirtualServices as they change, without a
// restart and without failing calls in flight; the gateway reads them as its
// ServiceAccount with the shipped RBAC.
func TestLiveVirtualServicesHotApplied(t *testing.T) {
	mc := startCluster(t)
	k := &kubeEnv{cp: mc.cp, net: newPodNet()}
	kubeconfig := applyRBAC(t, k.cp)
	for _, obj := range renderK8s(t, "overlays/asm-mtls") { // k8s/components/virtualservice-watch's RBAC
		if obj.GetKind() == "ClusterRole" || obj.GetKind() == "ClusterRoleBinding" {
			if strings.HasPrefix(obj.GetName(), "envgate-virtualservices") {
				m, _ := mc.mapper.RESTMapping(obj.GroupVersionKind().GroupKind(), obj.GroupVersionKind().Version)
				if _, err := mc.dyn.Resource(m.Resource).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	k.environment(t, "env1", 1)
	k.environment(t, "env2", 1)
	seed := renderK8s(t, "overlays/istio")
	createVS := func(name string) {
		for _, obj := range seed {
			if obj.GetKind() == "VirtualService" && obj.GetName() == name {
				obj.SetAPIVersion("networking.istio.io/v1") // as stored: the seed wrote v1alpha3
				if _, err := mc.dyn.Resource(virtualservice.GVR).Namespace("default").Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
		t.Fatalf("no VirtualService %s", name)
	}
	createVS("app-virtual-service-env1")

	cfg := kubeGatewayConfig(t, kubeconfig, func(c *config.Config) {
		c.Routing.VirtualServices = &config.VirtualServices{Kubernetes: true}
	})
	k.gw = startGateway(t, cfg, nil, k.net.dialer())
	k.echo = echoClient(t, k.gw.Addrs()[0])
	waitUntil(t, "ready", func() bool { return readyStatus(t, k.gw) == 200 })
	waitUntil(t, "env1 routed by its VirtualService", func() bool { _, err := k.call(t, "env1"); return err == nil })
	if _, err := k.call(t, "env2"); status.Code(err) != codes.Unimplemented {
		t.Fatalf("env2 before its VirtualService: %v", err)
	}

	stop := make(chan struct{})
	l := startLoad(t, k.echo, "env1", 100, stop)
	hold := func() { time.Sleep(time.Second) } // keeps env1's load running across each change: pacing, not synchronisation
	hold()
	createVS("app-virtual-service-env2")
	waitUntil(t, "env2 routed once its VirtualService exists", func() bool { _, err := k.call(t, "env2"); return err == nil })
	// A VirtualService with a fault injection is rejected whole.
	bad := findKind(t, seed, "VirtualService").DeepCopy()
	bad.SetName("with-fault")
	bad.SetAPIVersion("networking.istio.io/v1")
	bad.SetResourceVersion("")
	http := bad.Object["spec"].(map[string]any)["http"].([]any)
	http[0].(map[string]any)["fault"] = map[string]any{"abort": map[string]any{"httpStatus": int64(503), "percentage": map[string]any{"value": float64(100)}}}
	if _, err := mc.dyn.Resource(virtualservice.GVR).Namespace("default").Create(context.Background(), bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the rejection reported", func() bool {
		return strings.Contains(scrape(t, k.gw, "/metrics"), `envgate_virtualservice_unimplemented_field{effect="rejected",field="spec.http[0].fault",object="default/with-fault"} 1`)
	})
	// A specific-host object (created later than the seed's "*" ones) takes
	// env1's calls for its host only, and an object bound to another
	// gateway is listed as unbound (Issue 11, points 1 and 2).
	api := findKind(t, seed, "VirtualService").DeepCopy()
	api.SetName("api-host")
	api.SetAPIVersion("networking.istio.io/v1")
	api.SetResourceVersion("")
	api.Object["spec"] = map[string]any{
		"hosts":    []any{"api.example.com"},
		"gateways": []any{"common-istio-gateway"},
		"http": []any{map[string]any{
			"match": []any{map[string]any{"headers": map[string]any{"env": map[string]any{"exact": "env1"}}}},
			"route": []any{map[string]any{"destination": map[string]any{"host": "app-service.env2.svc.cluster.local", "port": map[string]any{"number": int64(50051)}}}},
		}},
	}
	elsewhere := api.DeepCopy()
	elsewhere.SetName("elsewhere")
	elsewhere.Object["spec"].(map[string]any)["gateways"] = []any{"istio-system/other-gateway"}
	for _, o := range []*unstructured.Unstructured{api, elsewhere} {
		if _, err := mc.dyn.Resource(virtualservice.GVR).Namespace("default").Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	apiClient := echoClient(t, k.gw.Addrs()[0], grpc.WithAuthority("api.example.com"))
	waitUntil(t, "env1 for api.example.com served by env2", func() bool {
		ctx, cancel := context.WithTimeout(withEnv(context.Background(), "env1"), 10*time.Second)
		defer cancel()
		resp, err := apiClient.Call(ctx, &echopb.EchoRequest{})
		return err == nil && strings.Contains(resp.GetMessage(), "ServerEnv:env2")
	})
	if resp, err := k.call(t, "env1"); err != nil || !strings.Contains(resp.GetMessage(), "ServerEnv:env1") {
		t.Fatalf("env1 for other authorities: %v %v", resp, err)
	}
	// The two objects arrive as separate watch events: the one bound
	// elsewhere may be applied after api-host is already serving.
	waitUntil(t, "default/elsewhere listed as unbound in /routes", func() bool {
		var routes struct {
			Unbound map[string]string `json:"unbound"`
		}
		if err := json.Unmarshal([]byte(scrape(t, k.gw, "/routes")), &routes); err != nil {
			t.Fatal(err)
		}
		return strings.Contains(routes.Unbound["default/elsewhere"], "istio-system/other-gateway")
	})
	hold()
	close(stop)
	l.wait()
	l.check(t)

	// gateway explain against the cluster, as an operator runs it.
	cfgFile := filepath.Join(t.TempDir(), "envgate.yaml")
	if err := os.WriteFile(cfgFile, []byte("routing: {virtualServices: {kubernetes: true}}\ndiscovery: {kubernetes: {}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := run(context.Background(), []string{"explain", "-config", cfgFile, "-kubeconfig", kubeconfig, "-H", "env: env2"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`rule 1 default/app-virtual-service-env1 http[0]: no match: match[0]: header env is "env2", want exact "env1"`,
		"rule 2 default/app-virtual-service-env2 http[0]: MATCH",
		"decision: route to app-service.env2.svc.cluster.local:50051",
		"rejected: default/with-fault: unimplemented fields that change routing: spec.http[0].fault",
		"virtual host: *",
		"not bound: default/elsewhere: spec.gateways [istio-system/other-gateway] resolve to [istio-system/other-gateway], not default/common-istio-gateway",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("explain output lacks %q:\n%s", want, out.String())
		}
	}
}

// Beyond Istio, opt-in: a baseline environment takes the calls of an
// environment that has no service, and a response header names who served.
func TestBaselineAndDebugHeader(t *testing.T) {
	base := startBackend(t, "baseline")
	own := startBackend(t, "env1")
	cfg := testConfig(t, map[string][]string{"baseline": {base.addr}, "env1": {own.addr}})
	cfg.Routing.Baseline = "baseline"
	cfg.Routing.DebugHeader = true
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// An environment with no Service yet, as Kubernetes discovery sees it
	// (a static config refuses it at load).
	cfg.Environments = append(cfg.Environments, "pr-42")
	gw := startGateway(t, cfg, nil)
	c := echoClient(t, gw.Addrs()[0])
	call := func(env string, req *echopb.EchoRequest) (metadata.MD, error) {
		var hdr, tr metadata.MD
		_, err := c.Call(withEnv(testCtx(t), env), req, grpc.Header(&hdr), grpc.Trailer(&tr))
		return metadata.Join(hdr, tr), err
	}

	md, err := call("pr-42", &echopb.EchoRequest{})
	if err != nil || strings.Join(md.Get(proxyBaselineHeader), "") != "baseline" || strings.Join(md.Get(proxyUpstreamHeader), "") != "baseline "+base.addr {
		t.Fatalf("pr-42: %v %v", md, err)
	}
	md, err = call("env1", &echopb.EchoRequest{})
	if err != nil || len(md.Get(proxyBaselineHeader)) != 0 || strings.Join(md.Get(proxyUpstreamHeader), "") != "env1 "+own.addr {
		t.Fatalf("env1: %v %v", md, err)
	}
	// Also on a trailers-only failure.
	md, err = call("env1", &echopb.EchoRequest{StatusCode: int32(codes.NotFound)})
	if status.Code(err) != codes.NotFound || strings.Join(md.Get(proxyUpstreamHeader), "") != "env1 "+own.addr {
		t.Fatalf("env1 failing: %v %v", md, err)
	}
	// An environment that is not configured stays unknown.
	if _, err := call("pr-43", &echopb.EchoRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("pr-43: %v", err)
	}
}

const (
	proxyBaselineHeader = "x-envgate-baseline"
	proxyUpstreamHeader = "x-envgate-upstream"
)

// Istio retries a failed call on a newly picked endpoint (by default twice,
// on UNAVAILABLE, connection failures and CANCELLED), but only while nothing
// has reached the client.
func TestRetriesOnAnotherEndpoint(t *testing.T) {
	failing := startRawBackend(t, func(ss grpc.ServerStream) error {
		return status.Error(codes.Unavailable, "this endpoint is going away")
	})
	good := startBackend(t, "env1")
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {failing, good.addr}}), nil)
	c := echoClient(t, gw.Addrs()[0])
	// Round robin uses ready endpoints only: until the good one is
	// connected there is nowhere else to retry.
	waitUntil(t, "the good endpoint connected", func() bool {
		_, _ = c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{})
		return good.callCount() > 0
	})
	for i := range 20 {
		if _, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}

	// Once a message went to the client, a failure is the client's to see.
	s, err := c.BidiStream(withEnv(testCtx(t), "env1"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if err := s.Send(&echopb.EchoRequest{Text: "1"}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err == nil {
			break // reached the good endpoint
		}
		if s, err = c.BidiStream(withEnv(testCtx(t), "env1")); err != nil {
			t.Fatal(err)
		}
	}
	before := good.callCount()
	if err := s.Send(&echopb.EchoRequest{StatusCode: int32(codes.Unavailable), StatusMessage: "late failure"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "late failure" {
		t.Fatalf("late failure: %v", err)
	}
	good.waitCall(t)
	if n := good.callCount() - before; n != 1 {
		t.Fatalf("a stream that had answered was retried: %d more calls", n)
	}
}

func TestNoRetriesWhenTheRouteSaysSo(t *testing.T) {
	failing := startRawBackend(t, func(ss grpc.ServerStream) error {
		return status.Error(codes.Unavailable, "down")
	})
	gw := vsGateway(t, fmt.Sprintf(vsHead, "noretry")+`
    - retries: {attempts: 0}
      route: [{destination: {host: app-service.env1.svc.cluster.local}}]
`, map[string][]string{"env1": {failing}})
	_, err := echoClient(t, gw.Addrs()[0]).Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "down" {
		t.Fatalf("got %v", err)
	}
}

// Virtual hosts through the gateway, with real backends and the authority
// a client sends: a specific host's object wins over a "*" object for that
// host (Envoy config_impl.cc RouteMatcher::findVirtualHost, Istio
// gateway.go buildGatewayHTTPRouteConfig), other authorities get the "*"
// one, and a request for the specific host never falls through to "*";
// /explain names the virtual host and agrees with each live answer.
func TestVirtualHostsThroughGateway(t *testing.T) {
	star, api := startBackend(t, "star"), startBackend(t, "api")
	y := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
  - match: [{headers: {env: {exact: e}}}]
    route: [{destination: {host: app-service.star.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  hosts: ["api.example.com"]
  gateways: [common-istio-gateway]
  http:
  - match: [{headers: {env: {exact: e}}}]
    route: [{destination: {host: app-service.api.svc.cluster.local}}]
`
	gw := vsGateway(t, y, map[string][]string{"star": {star.addr}, "api": {api.addr}})
	for _, tc := range []struct {
		authority, env string
		want           *backend // nil: no route
		host           string   // the virtual host /explain names
	}{
		{"api.example.com", "e", api, "api.example.com"},
		{"API.Example.com:443", "e", api, "api.example.com"},
		{"web.example.com", "e", star, "*"},
		{"api.example.com", "other", nil, "api.example.com"},
	} {
		c := echoClient(t, gw.Addrs()[0], grpc.WithAuthority(tc.authority))
		resp, err := c.Call(withEnv(testCtx(t), tc.env), &echopb.EchoRequest{IncludeDetails: true})
		switch {
		case tc.want == nil && status.Code(err) != codes.Unimplemented:
			t.Fatalf("%s env=%s: %v, want UNIMPLEMENTED", tc.authority, tc.env, err)
		case tc.want != nil && (err != nil || resp.GetServer() != tc.want.addr):
			t.Fatalf("%s env=%s: served by %s (%v), want %s", tc.authority, tc.env, resp.GetServer(), err, tc.want.addr)
		}
		var e explanation
		if err := json.Unmarshal([]byte(scrape(t, gw, "/explain?method=/echo.EchoService/Call&authority="+tc.authority+"&header=env:"+tc.env)), &e); err != nil {
			t.Fatal(err)
		}
		routed := strings.HasPrefix(e.Decision, "route to")
		if e.VirtualHost != tc.host || routed != (tc.want != nil) {
			t.Fatalf("%s env=%s: explain %+v", tc.authority, tc.env, e)
		}
	}
}

// A health call without env, in VirtualService mode: a rule that matches it
// (a catch-all does, as in Istio) routes it to the backend; with no rule
// matching it, the gateway answers from its own health service. /explain
// says the same (Issue 11, point 9).
func TestHealthWithoutEnvInVirtualServiceMode(t *testing.T) {
	for _, tc := range []struct {
		name, rule string
		proxied    bool
	}{
		{"catch-all routes it", "  - route: [{destination: {host: app-service.env1.svc.cluster.local}}]", true},
		{"no match answers locally", "  - match: [{headers: {env: {exact: env1}}}]\n    route: [{destination: {host: app-service.env1.svc.cluster.local}}]", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBackend(t, "env1")
			gw := vsGateway(t, fmt.Sprintf(vsHead, "health")+tc.rule+"\n", map[string][]string{"env1": {b.addr}})
			conn := dial(t, gw.Addrs()[0])
			before := b.callCount()
			resp, err := healthpb.NewHealthClient(conn).Check(testCtx(t), &healthpb.HealthCheckRequest{})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health: %v %v", resp, err)
			}
			if proxied := b.callCount() > before; proxied != tc.proxied {
				t.Fatalf("proxied to the backend: %v, want %v", proxied, tc.proxied)
			}
			var e explanation
			if err := json.Unmarshal([]byte(scrape(t, gw, "/explain?method=/grpc.health.v1.Health/Check")), &e); err != nil {
				t.Fatal(err)
			}
			if routed := strings.HasPrefix(e.Decision, "route to"); routed != tc.proxied {
				t.Fatalf("explain: %q", e.Decision)
			}
		})
	}
}

// The configuration is not changed by the gateway built from it: the
// environments discovery follows with VirtualService files (the namespaces
// the rules send to) are the gateway's own (Issue 11, point 11).
func TestConfigNotMutated(t *testing.T) {
	b := startBackend(t, "env1")
	f := filepath.Join(t.TempDir(), "vs.yaml")
	if err := os.WriteFile(f, []byte(fmt.Sprintf(vsHead, "only-env1")+"  - route: [{destination: {host: app-service.env1.svc.cluster.local}}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, map[string][]string{"env1": {b.addr}, "env2": {b.addr}})
	cfg.Routing.VirtualServices = &config.VirtualServices{Files: []string{f}}
	cfg.Defaults()
	before := fmt.Sprint(cfg.Environments)
	gw := startGateway(t, cfg, nil)
	if after := fmt.Sprint(cfg.Environments); after != before {
		t.Fatalf("environments changed from %s to %s", before, after)
	}
	if got := fmt.Sprint(gw.envs); got != "[env1]" {
		t.Fatalf("discovery follows %s, want [env1]", got)
	}
}

// A destination host in the "name.namespace" form names no service: Istio
// does not expand it (pilot/pkg/model/config.go ResolveShortnameToFQDN
// expands only names without dots), Envoy has no cluster for it and
// answers 503, so the call gets UNAVAILABLE saying why, the merge reports
// the host, and explain shows it (Issue 11, point 6).
func TestNameNamespaceHostNamesNoService(t *testing.T) {
	b := startBackend(t, "env1")
	gw := vsGateway(t, fmt.Sprintf(vsHead, "short-ns")+"  - route: [{destination: {host: app-service.env1}}]\n", map[string][]string{"env1": {b.addr}})
	_, err := echoClient(t, gw.Addrs()[0]).Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), `"app-service.env1", which names no service`) {
		t.Fatalf("call: %v", err)
	}
	if b.callCount() != 0 {
		t.Fatal("the backend was reached")
	}
	var e explanation
	if err := json.Unmarshal([]byte(scrape(t, gw, "/explain?method=/echo.EchoService/Call&header=env:env1")), &e); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.Decision, "app-service.env1 (no such service)") || !strings.Contains(strings.Join(e.Issues, "\n"), "names no service") {
		t.Fatalf("explain: %+v", e)
	}
}
