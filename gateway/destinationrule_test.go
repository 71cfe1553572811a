package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/destinationrule"
	"github.com/envgate/envgate/gateway/internal/virtualservice"
	"github.com/envgate/envgate/internal/testca"
	"github.com/envgate/envgate/proto/echopb"
)

// applyIstioRBAC grants the gateway's ServiceAccount the read access to
// VirtualServices and DestinationRules that k8s/components/virtualservice-watch
// gives (rendered by the asm-mtls overlay, which uses it).
func applyIstioRBAC(t *testing.T, mc *manifestCluster) {
	t.Helper()
	for _, obj := range renderK8s(t, "overlays/asm-mtls") {
		if (obj.GetKind() == "ClusterRole" || obj.GetKind() == "ClusterRoleBinding") && strings.HasPrefix(obj.GetName(), "envgate-virtualservices") {
			m, _ := mc.mapper.RESTMapping(obj.GroupVersionKind().GroupKind(), obj.GroupVersionKind().Version)
			if _, err := mc.dyn.Resource(m.Resource).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The second seed's traffic split, live on the real kube-apiserver (Issue
// 12, points 2 and 3): two Deployments' pods in env1 labelled version v1
// and v2 (slices from the real EndpointSlice controller, labels read from
// pod metadata), a DestinationRule naming the subsets, a VirtualService
// sending 90/10 over them. Over 1,000 calls v2 gets its share within
// statistical bounds (binomial: mean 100, sd 9.5; bounds at more than 4
// sd). Relabelling a v1 pod to v2 moves it between subsets live.
func TestTrafficSplitBySubsetsLive(t *testing.T) {
	mc := startCluster(t)
	k := &kubeEnv{cp: mc.cp, net: newPodNet()}
	kubeconfig := applyRBAC(t, k.cp)
	applyIstioRBAC(t, mc)
	k.cp.EnsureNamespace(t, "env1", map[string]string{envLabel: "true"})
	k.cp.CreateService(t, "env1", "app-service", "grpc", 50051)
	v1a := k.net.addPodLabeled(t, k.cp, "env1", "app-v1-a", map[string]string{"version": "v1"}, true)
	v1b := k.net.addPodLabeled(t, k.cp, "env1", "app-v1-b", map[string]string{"version": "v1"}, true)
	v2 := k.net.addPodLabeled(t, k.cp, "env1", "app-v2-a", map[string]string{"version": "v2"}, true)
	// The documented example's DestinationRule and VirtualService, as
	// kubectl apply -k k8s/examples/traffic-split creates them (its
	// Deployments are replaced by the test's pods).
	for _, obj := range renderK8s(t, "examples/traffic-split") {
		gvr := virtualservice.GVR
		switch obj.GetKind() {
		case "DestinationRule":
			gvr = destinationrule.GVR
		case "VirtualService":
		default:
			continue
		}
		if _, err := mc.dyn.Resource(gvr).Namespace(obj.GetNamespace()).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	cfg := kubeGatewayConfig(t, kubeconfig, func(c *config.Config) {
		c.Routing.VirtualServices = &config.VirtualServices{Kubernetes: true}
	})
	k.gw = startGateway(t, cfg, nil, k.net.dialer())
	waitUntil(t, "ready", func() bool { return readyStatus(t, k.gw) == http.StatusOK })
	k.echo = echoClient(t, k.gw.Addrs()[0])
	v2Set := func() []string {
		eps, _ := k.gw.store.Get(k.gw.store.Subset("app-service.env1:50051", map[string]string{"version": "v2"}))
		return eps
	}
	waitUntil(t, "both subsets served", func() bool {
		resp, err := k.call(t, "env1")
		return err == nil && resp.GetServer() == v2.backend.addr && len(v2Set()) == 1
	})

	served := func(n int) map[string]int {
		t.Helper()
		by := map[string]int{}
		for range n {
			resp, err := k.call(t, "env1")
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			by[resp.GetServer()]++
		}
		return by
	}
	by := served(1000)
	if n := by[v2.backend.addr]; n < 60 || n > 140 {
		t.Errorf("v2 served %d of 1000 calls, want 100 within 60..140", n)
	}
	if by[v1a.backend.addr] < 300 || by[v1b.backend.addr] < 300 {
		t.Errorf("v1's two pods served %d and %d of 1000 calls, want about 450 each", by[v1a.backend.addr], by[v1b.backend.addr])
	}
	t.Logf("1,000 calls: v1 %d + %d, v2 %d", by[v1a.backend.addr], by[v1b.backend.addr], by[v2.backend.addr])

	// kubectl label pod app-v1-b version=v2 --overwrite
	k.cp.SetPodLabel(t, "env1", "app-v1-b", "version", "v2")
	waitUntil(t, "app-v1-b in subset v2", func() bool { return len(v2Set()) == 2 })
	by = served(500)
	// v1 is app-v1-a alone now (90%: mean 450, sd 6.7); app-v1-b takes half
	// of v2's 10% (mean 25, sd 4.9).
	if by[v1a.backend.addr] < 400 || by[v1b.backend.addr] > 60 {
		t.Errorf("after the relabel: app-v1-a served %d, app-v1-b %d of 500; want about 450 and 25", by[v1a.backend.addr], by[v1b.backend.addr])
	}
	t.Logf("after relabelling app-v1-b to v2, 500 calls: v1-a %d, v1-b %d, v2-a %d", by[v1a.backend.addr], by[v1b.backend.addr], by[v2.backend.addr])
}

// DestinationRules from files, with static endpoints: a DestinationRule's
// tls applies to its host only (env1 over ISTIO_MUTUAL, env2 over h2c, the
// default), and a subset, which needs pod labels, fails with a message
// saying so rather than routing to every endpoint.
func TestDestinationRulesFromFiles(t *testing.T) {
	mesh := testca.New(t, "mesh")
	dir, _ := meshDir(t, mesh)
	b1 := startTLSBackend(t, "env1", mesh.Issue(t, testca.Leaf{URIs: []string{"spiffe://cluster.local/ns/env1/sa/app"}}).TLS(t), mesh.Pool())
	b2 := startBackend(t, "env2")
	y := `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mtls, namespace: env1}
spec:
  host: app-service
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: private, namespace: env2}
spec:
  host: app-service
  exportTo: ["."]
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: broken, namespace: env2}
spec:
  host: app-service
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routes, namespace: default}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
  - match: [{headers: {env: {exact: env1}}}]
    route: [{destination: {host: app-service.env1.svc.cluster.local}}]
  - match: [{headers: {env: {exact: env2}}}]
    route: [{destination: {host: app-service.env2.svc.cluster.local}}]
  - match: [{headers: {env: {exact: env1-v2}}}]
    route: [{destination: {host: app-service.env1.svc.cluster.local, subset: v2}}]
  - match: [{headers: {env: {exact: env1-v3}}}]
    route: [{destination: {host: app-service.env1.svc.cluster.local, subset: v3}}]
`
	gw := vsGateway(t, y, map[string][]string{"env1": {b1.addr}, "env2": {b2.addr}}, func(c *config.Config) { c.Upstream.Mesh = config.Mesh{CertDir: dir} })
	c := echoClient(t, gw.Addrs()[0])
	for env, want := range map[string]string{"env1": b1.addr, "env2": b2.addr} {
		resp, err := c.Call(withEnv(testCtx(t), env), &echopb.EchoRequest{IncludeDetails: true})
		if err != nil || resp.GetServer() != want {
			t.Fatalf("%s: %v %v", env, resp, err)
		}
	}
	if got := b1.lastSNI(); got != "outbound|grpc||app-service.env1.svc.cluster.local" {
		t.Errorf("env1's SNI %q: the DestinationRule's ISTIO_MUTUAL was not applied", got)
	}
	for env, want := range map[string]string{
		"env1-v2": `subset "v2" selects pods by their labels, which only kubernetes discovery knows`,
		// Istio has no cluster for an undefined subset; Envoy answers 503.
		"env1-v3": `defines no subset "v3"`,
	} {
		_, err := c.Call(withEnv(testCtx(t), env), &echopb.EchoRequest{})
		if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), want) {
			t.Errorf("%s: %v, want UNAVAILABLE %q", env, err, want)
		}
	}
	var view struct {
		DestinationRules struct {
			Applied           []string
			Rejected, Unbound map[string]string
		} `json:"destinationRules"`
	}
	routes := scrape(t, gw, "/routes")
	if err := json.Unmarshal([]byte(routes), &view); err != nil {
		t.Fatal(err)
	}
	drs := view.DestinationRules
	if !strings.Contains(routes, `"destinationRule": "env1/mtls"`) || len(drs.Applied) != 1 ||
		!strings.Contains(drs.Unbound["env2/private"], `does not include the gateway's namespace`) ||
		!strings.Contains(drs.Rejected["env2/broken"], "spec.trafficPolicy.connectionPool.tcp") {
		t.Errorf("/routes does not say which DestinationRules apply, are refused or not visible:\n%s", routes)
	}
}

// Outlier detection from a DestinationRule (Issue 12, point 2): three
// endpoints, two answering UNAVAILABLE (Envoy counts a trailers-only
// UNAVAILABLE as a 503: router.cc Filter::onUpstreamHeaders). With
// consecutive5xxErrors 3 one is ejected after its third failure; with
// maxEjectionPercent 30 the second is not (Envoy's rule, outlier_detection_impl.cc
// DetectorImpl::ejectHost: the ejected share before this ejection must be
// under the maximum, 33% is not); the ejected one is back after
// baseEjectionTime.
func TestOutlierDetectionFromDestinationRule(t *testing.T) {
	var n1, n2 atomic.Int64
	failing := func(n *atomic.Int64) grpc.ServerOption {
		return grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			n.Add(1)
			return nil, status.Error(codes.Unavailable, "backend failing")
		})
	}
	good := startBackend(t, "env1")
	bad1, bad2 := startBackend(t, "env1", failing(&n1)), startBackend(t, "env1", failing(&n2))
	y := `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: eject, namespace: env1}
spec:
  host: app-service
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 1s, maxEjectionPercent: 30}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routes, namespace: default}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
  - route: [{destination: {host: app-service.env1.svc.cluster.local}}]
    retries: {attempts: 0}
`
	gw := vsGateway(t, y, map[string][]string{"env1": {good.addr, bad1.addr, bad2.addr}})
	c := echoClient(t, gw.Addrs()[0])
	call := func(n int) {
		for range n {
			_, _ = c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{})
		}
	}
	call(60)
	ejected, kept := &n1, &n2
	if n2.Load() < n1.Load() {
		ejected, kept = &n2, &n1
	}
	if ejected.Load() != 3 || kept.Load() < 10 {
		t.Fatalf("after 60 calls the failing endpoints got %d and %d calls; want one ejected after 3, the other kept in (maxEjectionPercent 30)", n1.Load(), n2.Load())
	}
	if good.callCount() < 25 {
		t.Fatalf("the good endpoint served %d of 60", good.callCount())
	}
	// Back after baseEjectionTime (1 s x 1 ejection).
	waitUntilWithin(t, 5*time.Second, "the ejected endpoint back", func() bool {
		call(3)
		return ejected.Load() > 3
	})
	t.Logf("failing endpoints: %d (ejected, back after 1s) and %d calls; good: %d", ejected.Load(), kept.Load(), good.callCount())
}

// connectionPool.http from a DestinationRule: http2MaxRequests caps the
// calls in flight to the destination (a call over it fails at once, as
// Envoy answers 503 overflow from its max_requests circuit breaker, and is
// not retried), maxRequestsPerConnection closes a connection after that
// many calls (Envoy's max_requests_per_connection), as Istio's
// cluster_traffic_policy.go applyConnectionPool sets them.
func TestConnectionPoolFromDestinationRule(t *testing.T) {
	arrived, release := make(chan struct{}, 10), make(chan struct{})
	var mu sync.Mutex
	perConn := map[string]int{} // calls per client connection (its address)
	gate := grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if p, ok := peer.FromContext(ctx); ok {
			mu.Lock()
			perConn[p.Addr.String()]++
			mu.Unlock()
		}
		if r, ok := req.(*echopb.EchoRequest); ok && r.GetText() == "hold" {
			arrived <- struct{}{}
			<-release
		}
		return h(ctx, req)
	})
	b := startBackend(t, "env1", gate)
	y := `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: env1}
spec:
  host: app-service
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 2, maxRequestsPerConnection: 3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routes, namespace: default}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
  - route: [{destination: {host: app-service.env1.svc.cluster.local}}]
`
	gw := vsGateway(t, y, map[string][]string{"env1": {b.addr}})
	c := echoClient(t, gw.Addrs()[0])

	var held sync.WaitGroup
	for range 2 {
		held.Go(func() {
			if _, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{Text: "hold"}); err != nil {
				t.Errorf("held call: %v", err)
			}
		})
	}
	<-arrived
	<-arrived
	start := time.Now()
	_, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "http2MaxRequests") || time.Since(start) > time.Second {
		t.Errorf("third call: %v after %v, want UNAVAILABLE overflow at once", err, time.Since(start))
	}
	close(release)
	held.Wait()

	mu.Lock()
	clear(perConn)
	mu.Unlock()
	for range 9 {
		if _, err := c.Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{}); err != nil {
			t.Fatalf("call: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for addr, n := range perConn {
		if n > 3 {
			t.Errorf("connection %s carried %d calls, want at most 3", addr, n)
		}
	}
	if len(perConn) < 3 {
		t.Errorf("9 calls over %d connections, want at least 3 (3 per connection): %v", len(perConn), perConn)
	}
}
