package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/internal/kubetest"
	"github.com/envgate/envgate/proto/echopb"
)

const envLabel = "envgate.io/environment"

// podNet gives test pods addresses the API accepts and maps them to the real
// echo servers. kube-apiserver refuses loopback addresses in EndpointSlices
// ("may not be in the loopback range"), so pods get TEST-NET-1 addresses
// (192.0.2.0/24, never routed) and the gateway under test dials them through
// this map onto the 127.0.0.1 port where each pod's echo server listens.
type podNet struct {
	mu    sync.Mutex
	next  int
	addrs map[string]string // pod address -> echo server address
}

func newPodNet() *podNet { return &podNet{next: 1, addrs: map[string]string{}} }

func (n *podNet) dialer() func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		n.mu.Lock()
		real, ok := n.addrs[addr]
		n.mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("test pod network: nothing at %s", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", real)
	}
}

// pod is a test pod: an API object and the echo server behind it.
type pod struct {
	ns, name, ip string
	backend      *backend
}

// addPod starts an echo server for the pod, maps its address, and creates the
// pod in the cluster with the given readiness.
func (n *podNet) addPod(t testing.TB, cp *kubetest.ControlPlane, ns, name string, ready bool) *pod {
	t.Helper()
	return n.addPodLabeled(t, cp, ns, name, nil, ready)
}

// addPodLabeled is addPod with labels besides app=app-service.
func (n *podNet) addPodLabeled(t testing.TB, cp *kubetest.ControlPlane, ns, name string, labels map[string]string, ready bool) *pod {
	t.Helper()
	b := startBackend(t, ns)
	n.mu.Lock()
	ip := fmt.Sprintf("192.0.2.%d", n.next)
	n.next++
	n.addrs[ip+":50051"] = b.addr
	n.mu.Unlock()
	all := map[string]string{"app": "app-service"}
	for k, v := range labels {
		all[k] = v
	}
	cp.AddPodLabeled(t, ns, name, all, "grpc", 50051, ip, ready)
	return &pod{ns: ns, name: name, ip: ip, backend: b}
}

// applyRBAC creates the shipped k8s/base manifests (namespace,
// ServiceAccount, ClusterRole, ClusterRoleBinding) and returns a kubeconfig
// that authenticates as the gateway's ServiceAccount.
func applyRBAC(t testing.TB, cp *kubetest.ControlPlane) string {
	t.Helper()
	ctx := context.Background()
	for _, f := range []string{"namespace.yaml", "rbac.yaml"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(repoBin(t)), "k8s", "base", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(b), "\n---\n") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			switch o := obj.(type) {
			case *corev1.Namespace:
				_, err = cp.Admin.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
			case *corev1.ServiceAccount:
				_, err = cp.Admin.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
			case *rbacv1.ClusterRole:
				_, err = cp.Admin.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
			case *rbacv1.ClusterRoleBinding:
				_, err = cp.Admin.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
			default:
				t.Fatalf("%s: unexpected %T", f, obj)
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
	}
	return cp.WriteKubeconfig(t, "envgate", cp.ServiceAccountConfig(t, "envgate-system", "envgate"))
}

// kubeEnv is a control plane with the gateway's RBAC applied, and a gateway
// using Kubernetes discovery as the gateway's ServiceAccount.
type kubeEnv struct {
	cp   *kubetest.ControlPlane
	net  *podNet
	gw   *runningGateway
	echo echopb.EchoServiceClient
}

// environment creates a labelled namespace with app-service and n ready pods.
func (k *kubeEnv) environment(t testing.TB, ns string, n int) []*pod {
	t.Helper()
	k.cp.EnsureNamespace(t, ns, map[string]string{envLabel: "true"})
	k.cp.CreateService(t, ns, "app-service", "grpc", 50051)
	var pods []*pod
	for i := range n {
		pods = append(pods, k.net.addPod(t, k.cp, ns, fmt.Sprintf("app-%d", i), true))
	}
	return pods
}

func startKubeEnv(t testing.TB, setup func(*kubeEnv)) *kubeEnv {
	t.Helper()
	k := &kubeEnv{cp: kubetest.Start(t), net: newPodNet()}
	kubeconfig := applyRBAC(t, k.cp)
	if setup != nil {
		setup(k)
	}
	k.gw = startGateway(t, kubeGatewayConfig(t, kubeconfig), nil, k.net.dialer())
	waitUntil(t, "gateway ready", func() bool { return readyStatus(t, k.gw) == http.StatusOK })
	k.echo = echoClient(t, k.gw.Addrs()[0])
	return k
}

// kubeGatewayConfig is a gateway on loopback with Kubernetes discovery as
// the kubeconfig says, and modify's changes.
func kubeGatewayConfig(t testing.TB, kubeconfig string, modify ...func(*config.Config)) *config.Config {
	t.Helper()
	off := false
	cfg := &config.Config{
		Listeners: []config.Listener{{Address: "127.0.0.1:0"}},
		Admin:     config.Admin{Address: "127.0.0.1:0", DebugAddress: "127.0.0.1:0"},
		Discovery: config.Discovery{Kubernetes: &config.Kubernetes{Kubeconfig: kubeconfig}},
		AccessLog: &off,
	}
	for _, m := range modify {
		m(cfg)
	}
	cfg.Defaults()
	cfg.DrainDelay = time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func readyStatus(t testing.TB, gw *runningGateway) int {
	resp, err := http.Get("http://" + gw.AdminAddr() + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitUntil polls cond every 10ms for up to 60s.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitUntilWithin(t, time.Minute, what, cond)
}

func waitUntilWithin(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitEndpoints waits until the gateway balances over n endpoints of ns.
func (k *kubeEnv) waitEndpoints(t testing.TB, ns string, n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d endpoints in %s", n, ns), func() bool {
		key, err := k.gw.store.Resolve("app-service."+ns, "grpc", "grpc")
		eps, _ := k.gw.store.Get(key)
		return err == nil && len(eps) == n
	})
}

func (k *kubeEnv) call(t testing.TB, env string) (*echopb.EchoResponse, error) {
	ctx, cancel := context.WithTimeout(withEnv(context.Background(), env), 10*time.Second)
	defer cancel()
	return k.echo.Call(ctx, &echopb.EchoRequest{IncludeDetails: true})
}

func TestKubeRoutesEachEnvToItsPodsBalanced(t *testing.T) {
	var env1, env2 []*pod
	k := startKubeEnv(t, func(k *kubeEnv) {
		env1 = k.environment(t, "env1", 2)
		env2 = k.environment(t, "env2", 2)
	})
	k.waitEndpoints(t, "env1", 2)
	k.waitEndpoints(t, "env2", 2)
	for _, tc := range []struct {
		env  string
		pods []*pod
	}{{"env1", env1}, {"env2", env2}} {
		// The gateway connects to a destination's pods at its first call
		// and sends calls only to pods whose connection is up, as gRPC's
		// round_robin does: under load, the calls made before the second
		// connection is up all go to the first pod (CI saw 33 of 40).
		// Balance is measured once both answer.
		answered := map[string]bool{}
		waitUntil(t, tc.env+"'s two pods answering", func() bool {
			resp, err := k.call(t, tc.env)
			if err != nil {
				t.Fatalf("%s: %v", tc.env, err)
			}
			answered[resp.GetServer()] = true
			return len(answered) == len(tc.pods)
		})
		seen := map[string]int{}
		for range 40 {
			resp, err := k.call(t, tc.env)
			if err != nil {
				t.Fatalf("%s: %v", tc.env, err)
			}
			if !strings.Contains(resp.GetMessage(), "ServerEnv:"+tc.env) {
				t.Fatalf("%s answered by %q", tc.env, resp.GetMessage())
			}
			seen[resp.GetServer()]++
		}
		for _, p := range tc.pods {
			if seen[p.backend.addr] < 10 {
				t.Errorf("%s: pod %s served %d of 40 calls: %v", tc.env, p.name, seen[p.backend.addr], seen)
			}
		}
	}
}

func TestKubeNamespaceLabelAndReadiness(t *testing.T) {
	k := startKubeEnv(t, func(k *kubeEnv) { k.environment(t, "env1", 1) })
	ctx := context.Background()

	// A labelled namespace created while the gateway runs becomes routable.
	if _, err := k.call(t, "env3"); status.Code(err) != codes.Unimplemented {
		t.Fatalf("env3 before it exists: %v", err)
	}
	k.environment(t, "env3", 1)
	waitUntil(t, "env3 routable", func() bool { _, err := k.call(t, "env3"); return err == nil })

	// Losing the label makes it unknown again.
	ns, err := k.cp.Admin.CoreV1().Namespaces().Get(ctx, "env3", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(ns.Labels, envLabel)
	if _, err := k.cp.Admin.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "env3 unroutable", func() bool {
		_, err := k.call(t, "env3")
		return status.Code(err) == codes.Unimplemented && strings.Contains(status.Convert(err).Message(), `no route for env="env3"`)
	})

	// An environment whose pods are all not ready: no healthy upstream.
	k.cp.SetPodReady(t, "env1", "app-0", false)
	waitUntil(t, "env1 unavailable", func() bool {
		_, err := k.call(t, "env1")
		return status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "no healthy upstream")
	})

	// Namespaces without the label, kube-system included, are never routed.
	for _, env := range []string{"kube-system", "default", "envgate-system"} {
		if _, err := k.call(t, env); status.Code(err) != codes.Unimplemented {
			t.Errorf("%s: %v, want UNIMPLEMENTED", env, err)
		}
	}
}

func TestKubeGatewayIdentityIsLeastPrivilege(t *testing.T) {
	cp := kubetest.Start(t)
	kubeconfig := applyRBAC(t, cp)
	_ = kubeconfig
	sa := kubernetes.NewForConfigOrDie(cp.ServiceAccountConfig(t, "envgate-system", "envgate"))
	ctx := context.Background()
	cp.EnsureNamespace(t, "env1", map[string]string{envLabel: "true"})
	if _, err := cp.Admin.CoreV1().Secrets("env1").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	allowed := map[string]func() error{
		"list endpointslices": func() error {
			_, err := sa.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
			return err
		},
		"watch endpointslices": func() error {
			w, err := sa.DiscoveryV1().EndpointSlices("").Watch(ctx, metav1.ListOptions{})
			stopWatch(w)
			return err
		},
		"list services": func() error { _, err := sa.CoreV1().Services("").List(ctx, metav1.ListOptions{}); return err },
		"watch services": func() error {
			w, err := sa.CoreV1().Services("").Watch(ctx, metav1.ListOptions{})
			stopWatch(w)
			return err
		},
		"list pods": func() error { _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err },
		"watch pods": func() error {
			w, err := sa.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})
			stopWatch(w)
			return err
		},
		"list namespaces": func() error { _, err := sa.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); return err },
		"watch namespaces": func() error {
			w, err := sa.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{})
			stopWatch(w)
			return err
		},
	}
	forbidden := map[string]func() error{
		"get secret":   func() error { _, err := sa.CoreV1().Secrets("env1").Get(ctx, "s", metav1.GetOptions{}); return err },
		"list secrets": func() error { _, err := sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); return err },
		"delete pod": func() error {
			return sa.CoreV1().Pods("env1").Delete(ctx, "x", metav1.DeleteOptions{})
		},
		"create service": func() error {
			_, err := sa.CoreV1().Services("env1").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		},
		"list configmaps": func() error { _, err := sa.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{}); return err },
		"create endpointslice": func() error {
			_, err := sa.DiscoveryV1().EndpointSlices("env1").Create(ctx, &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "x"}, AddressType: discoveryv1.AddressTypeIPv4}, metav1.CreateOptions{})
			return err
		},
		"label a namespace": func() error {
			_, err := sa.CoreV1().Namespaces().Update(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "env1"}}, metav1.UpdateOptions{})
			return err
		},
		"create token": func() error {
			_, err := sa.CoreV1().ServiceAccounts("envgate-system").Get(ctx, "envgate", metav1.GetOptions{})
			return err
		},
		"list clusterroles": func() error { _, err := sa.RbacV1().ClusterRoles().List(ctx, metav1.ListOptions{}); return err },
	}
	for name, f := range allowed {
		if err := f(); err != nil {
			t.Errorf("%s: %v, want allowed", name, err)
		}
	}
	for name, f := range forbidden {
		if err := f(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: %v, want forbidden", name, err)
		}
	}
}

func stopWatch(w interface{ Stop() }) {
	if w != nil {
		w.Stop()
	}
}

// Without a reachable API server the gateway serves its health but is not
// ready: the load balancer keeps traffic away until discovery has synced.
func TestKubeNotReadyUntilSynced(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	_ = lis.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://%s", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`, dead)), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := startGateway(t, kubeGatewayConfig(t, kubeconfig), nil)
	resp, err := http.Get("http://" + gw.AdminAddr() + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("ready before discovery synced: %d", resp.StatusCode)
	}
	live, err := http.Get("http://" + gw.AdminAddr() + "/healthz/live")
	if err != nil || live.StatusCode != http.StatusOK {
		t.Fatalf("live: %v %v", live, err)
	}
	live.Body.Close()
}

// load sends calls at a steady rate until stop is closed and counts them.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []error
	done       chan struct{}
}

func startLoad(t testing.TB, c echopb.EchoServiceClient, env string, perSecond int, stop <-chan struct{}) *load {
	l := &load{done: make(chan struct{})}
	interval := time.Second / time.Duration(perSecond)
	go func() {
		defer close(l.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(withEnv(context.Background(), env), 10*time.Second)
				defer cancel()
				if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 10 {
						l.errs = append(l.errs, err)
					}
					l.mu.Unlock()
					return
				}
				l.ok.Add(1)
			})
		}
	}()
	return l
}

func (l *load) wait() { <-l.done }

func (l *load) check(t testing.TB) {
	t.Helper()
	t.Logf("load: %d calls OK, %d failed", l.ok.Load(), l.failed.Load())
	if l.failed.Load() != 0 {
		t.Fatalf("%d calls failed, first: %v", l.failed.Load(), errors.Join(l.errs...))
	}
	if l.ok.Load() == 0 {
		t.Fatal("no call went through")
	}
}

// waitServed waits until the pod's echo server has answered a call.
func waitServed(t testing.TB, p *pod) {
	t.Helper()
	waitUntil(t, "pod "+p.name+" serving calls", func() bool { return p.backend.callCount() > 0 })
}

func TestKubeScaleAndRollUnderLoad(t *testing.T) {
	var pods []*pod
	k := startKubeEnv(t, func(k *kubeEnv) { pods = k.environment(t, "env1", 2) })
	k.waitEndpoints(t, "env1", 2)
	stop := make(chan struct{})
	l := startLoad(t, k.echo, "env1", 200, stop)
	start := time.Now()
	// hold keeps each state of the rollout under load for a while: the
	// scenario's pacing (about 20 s in all), not a wait for a condition.
	hold := func() { time.Sleep(2 * time.Second) }

	// Scale from 2 to 4.
	for i := 2; i < 4; i++ {
		pods = append(pods, k.net.addPod(t, k.cp, "env1", fmt.Sprintf("app-%d", i), true))
	}
	k.waitEndpoints(t, "env1", 4)
	for _, p := range pods[2:] {
		waitServed(t, p)
	}
	hold()

	// Replace every pod, one by one, as a rolling update does: the new pod
	// is ready first, then the old one terminates, then it is gone.
	ctx := context.Background()
	grace := int64(30)
	for i, old := range pods[:4] {
		fresh := k.net.addPod(t, k.cp, "env1", fmt.Sprintf("app-new-%d", i), true)
		k.waitEndpoints(t, "env1", 5)
		waitServed(t, fresh)
		hold()
		if err := k.cp.Admin.CoreV1().Pods("env1").Delete(ctx, old.name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
			t.Fatal(err)
		}
		k.waitEndpoints(t, "env1", 4) // terminating: serving, not ready
		served := old.backend.callCount()
		// A terminating endpoint gets no new calls (one may have been picked
		// just before the update).
		for range 20 {
			if _, err := k.call(t, "env1"); err != nil {
				t.Fatal(err)
			}
		}
		if n := old.backend.callCount() - served; n > 1 {
			t.Errorf("terminating pod %s got %d new calls", old.name, n)
		}
		hold()
		k.cp.DeletePod(t, "env1", old.name)
		old.backend.stop() // the pod is gone: calls still sent there would fail
	}
	if rest := 20*time.Second - time.Since(start); rest > 0 {
		time.Sleep(rest) // the load runs 20 s at least
	}
	close(stop)
	l.wait()
	t.Logf("load ran %v", time.Since(start).Round(time.Millisecond))
	l.check(t)
}

// The gateway's API server goes away for 10 s under load while the cluster
// goes on changing through a second API server: calls to endpoints that
// stay up keep working, and the change made during the outage is picked up
// once the gateway's API server is back.
func TestKubeAPIServerOutage(t *testing.T) {
	var pods []*pod
	k := &kubeEnv{cp: kubetest.Start(t, kubetest.Options{SecondAPIServer: true}), net: newPodNet()}
	kubeconfig := applyRBAC(t, k.cp)
	pods = k.environment(t, "env1", 2)
	k.gw = startGateway(t, kubeGatewayConfig(t, kubeconfig), nil, k.net.dialer())
	k.echo = echoClient(t, k.gw.Addrs()[0])
	k.waitEndpoints(t, "env1", 2)

	stop := make(chan struct{})
	l := startLoad(t, k.echo, "env1", 200, stop)
	k.cp.StopAPIServer()
	outage := time.After(10 * time.Second) // the length of the outage, not a wait for a condition
	added := k.net.addPod(t, k.cp, "env1", "app-added", true)
	<-outage
	if n := added.backend.callCount(); n != 0 {
		t.Fatalf("the pod added during the outage got %d calls before the gateway could know it", n)
	}
	if readyStatus(t, k.gw) != http.StatusOK {
		t.Error("gateway turned unready while its API server was away; it routes on its last known state")
	}
	restart := time.Now()
	k.cp.RestartAPIServer(t)
	t.Logf("API server back after %v", time.Since(restart).Round(time.Millisecond))
	// client-go's reflector retries with backoff (up to 30 s, jittered), so
	// catching up takes until its next attempt.
	waitUntilWithin(t, 2*time.Minute, "the change made during the outage", func() bool {
		eps, _ := k.gw.store.Get("app-service.env1:50051")
		return len(eps) == 3
	})
	t.Logf("change picked up %v after the restart began", time.Since(restart).Round(time.Millisecond))
	waitServed(t, added)
	close(stop)
	l.wait()
	l.check(t)
	for _, p := range pods {
		if p.backend.callCount() == 0 {
			t.Errorf("pod %s served nothing", p.name)
		}
	}
}

// A route's port.number is the Service's port, as Istio names the cluster
// (outbound|<port>||<host>, pilot/pkg/networking/core/route/route.go
// GetDestinationCluster), and the pods are dialed on the port the
// EndpointSlices map it to. Here the Service listens on 80 and its pods on
// 50051 (Issue 11, point 6):
//   - port 80: the call reaches the pod on 50051;
//   - no port: the Service's only port, as GetDestinationCluster takes it;
//   - port 50051, the pods' number, not the Service's: Istio's cluster
//     outbound|50051||app-service... does not exist and Envoy answers 503
//     (router.cc Filter::decodeHeaders, no cluster); envgate UNAVAILABLE,
//     naming the ports the Service has.
//
// /routes shows for each destination the endpoint set and the addresses a
// call dials.
func TestKubeRoutePortIsTheServicePort(t *testing.T) {
	k := &kubeEnv{cp: kubetest.Start(t), net: newPodNet()}
	kubeconfig := applyRBAC(t, k.cp)
	k.cp.EnsureNamespace(t, "env1", map[string]string{envLabel: "true"})
	k.cp.CreateServicePorts(t, "env1", "app-service", corev1.ServicePort{Name: "grpc", Port: 80, TargetPort: intstr.FromString("grpc")})
	p := k.net.addPod(t, k.cp, "env1", "app-0", true)
	vs := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ports, namespace: default}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
  - match: [{headers: {env: {exact: service-port}}}]
    route: [{destination: {host: app-service.env1.svc.cluster.local, port: {number: 80}}}]
  - match: [{headers: {env: {exact: no-port}}}]
    route: [{destination: {host: app-service.env1.svc.cluster.local}}]
  - match: [{headers: {env: {exact: pod-port}}}]
    route: [{destination: {host: app-service.env1.svc.cluster.local, port: {number: 50051}}}]
`
	file := filepath.Join(t.TempDir(), "vs.yaml")
	if err := os.WriteFile(file, []byte(vs), 0o600); err != nil {
		t.Fatal(err)
	}
	k.gw = startGateway(t, kubeGatewayConfig(t, kubeconfig, func(c *config.Config) {
		c.Routing.VirtualServices = &config.VirtualServices{Files: []string{file}}
	}), nil, k.net.dialer())
	waitUntil(t, "gateway ready", func() bool { return readyStatus(t, k.gw) == http.StatusOK })
	k.echo = echoClient(t, k.gw.Addrs()[0])
	waitUntil(t, "the pod behind Service port 80", func() bool {
		key, err := k.gw.store.Resolve("app-service.env1", "80", "grpc")
		eps, _ := k.gw.store.Get(key)
		return err == nil && len(eps) == 1
	})

	for _, env := range []string{"service-port", "no-port"} {
		resp, err := k.call(t, env)
		if err != nil || resp.GetServer() != p.backend.addr {
			t.Fatalf("env %s: %v %v, want served by the pod", env, resp, err)
		}
	}
	_, err := k.call(t, "pod-port")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `has no port "50051" (its ports: 80 (grpc))`) {
		t.Fatalf("port the Service lacks: %v, want UNAVAILABLE naming the Service's ports", err)
	}
	if got := p.backend.callCount(); got != 2 {
		t.Fatalf("the pod got %d calls, want 2", got)
	}

	var view struct {
		Rules []struct {
			Destinations []struct {
				Destination, EndpointSet, Error string
				Endpoints                       []string
			}
		}
	}
	if err := json.Unmarshal([]byte(scrape(t, k.gw, "/routes")), &view); err != nil {
		t.Fatal(err)
	}
	want := []struct{ dest, set, endpoint, err string }{
		{"app-service.env1.svc.cluster.local:80", "app-service.env1:80", p.ip + ":50051", ""},
		{"app-service.env1.svc.cluster.local", "app-service.env1:80", p.ip + ":50051", ""},
		{"app-service.env1.svc.cluster.local:50051", "", "", `has no port "50051"`},
	}
	if len(view.Rules) != len(want) {
		t.Fatalf("/routes: %+v", view)
	}
	for i, w := range want {
		d := view.Rules[i].Destinations[0]
		if d.Destination != w.dest || d.EndpointSet != w.set || (w.endpoint != "" && (len(d.Endpoints) != 1 || d.Endpoints[0] != w.endpoint)) ||
			(w.err == "") != (d.Error == "") || !strings.Contains(d.Error, w.err) {
			t.Errorf("/routes rule %d: %+v, want %+v", i, d, w)
		}
	}
	// /explain says the same of one request.
	for env, want := range map[string]string{
		"service-port": "app-service.env1.svc.cluster.local:80: endpoint set app-service.env1:80: " + p.ip + ":50051",
		"pod-port":     `app-service.env1.svc.cluster.local:50051: no such port: app-service.env1 has no port "50051"`,
	} {
		var e explanation
		if err := json.Unmarshal([]byte(scrape(t, k.gw, "/explain?header=env:"+env)), &e); err != nil {
			t.Fatal(err)
		}
		if len(e.Dials) != 1 || !strings.HasPrefix(e.Dials[0], want) {
			t.Errorf("/explain env %s dials %q, want %q", env, e.Dials, want)
		}
	}
}

// The second seed's app on the cluster: gRPC calls go to app-service and
// HTTP requests to hellosvc of the same environment, by VirtualService
// rules, discovery following hellosvc (discovery.kubernetes.services) as
// it follows app-service; hellosvc's port is named http, so the gateway
// speaks HTTP/1.1 to it (Istio's protocol selection).
func TestKubeHTTPToAnotherService(t *testing.T) {
	k := &kubeEnv{cp: kubetest.Start(t), net: newPodNet()}
	kubeconfig := applyRBAC(t, k.cp)
	k.cp.EnsureNamespace(t, "env1", map[string]string{envLabel: "true"})
	k.cp.CreateService(t, "env1", "app-service", "grpc", 80)
	k.cp.CreateServicePorts(t, "env1", "hellosvc", corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http")})
	grpcPod := k.net.addPod(t, k.cp, "env1", "app-0", true)
	hello := startHTTPNamedBackend(t, "env1")
	k.net.mu.Lock()
	helloIP := fmt.Sprintf("192.0.2.%d", k.net.next)
	k.net.next++
	k.net.addrs[helloIP+":8080"] = hello
	k.net.mu.Unlock()
	k.cp.AddPod(t, "env1", "hello-0", "hellosvc", "http", 8080, helloIP, true)

	vs := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: env1, namespace: env1}
spec:
  hosts: ["*"]
  gateways: [default/common-istio-gateway]
  http:
  - match: [{headers: {env: {exact: env1}, content-type: {prefix: application/grpc}}}]
    route: [{destination: {host: app-service.env1.svc.cluster.local}}]
  - match: [{headers: {env: {exact: env1}}}]
    route: [{destination: {host: hellosvc.env1.svc.cluster.local}}]
`
	file := filepath.Join(t.TempDir(), "vs.yaml")
	if err := os.WriteFile(file, []byte(vs), 0o600); err != nil {
		t.Fatal(err)
	}
	k.gw = startGateway(t, kubeGatewayConfig(t, kubeconfig, func(c *config.Config) {
		c.Routing.VirtualServices = &config.VirtualServices{Files: []string{file}}
		c.Discovery.Kubernetes.Services = []string{"hellosvc"}
	}), nil, k.net.dialer())
	waitUntil(t, "gateway ready", func() bool { return readyStatus(t, k.gw) == http.StatusOK })
	waitUntil(t, "both services' pods", func() bool {
		a, _ := k.gw.store.Get("app-service.env1:80")
		h, _ := k.gw.store.Get("hellosvc.env1:80")
		return len(a) == 1 && len(h) == 1
	})
	k.echo = echoClient(t, k.gw.Addrs()[0])
	if resp, err := k.call(t, "env1"); err != nil || resp.GetServer() != grpcPod.backend.addr {
		t.Fatalf("gRPC: %v %v, want served by app-service's pod", resp, err)
	}
	for _, c := range []*http.Client{{}, {Transport: h2cTransport()}} {
		req, _ := http.NewRequest("GET", "http://"+k.gw.Addrs()[0]+"/api/hello?x=1", nil)
		req.Header.Set("env", "env1")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Backend-Path") != "/api/hello?x=1" || resp.Header.Get("X-Backend-Proto") != "HTTP/1.1" {
			t.Fatalf("HTTP (client %s): %d, backend saw %q over %q; want hellosvc's pod over HTTP/1.1", resp.Proto, resp.StatusCode,
				resp.Header.Get("X-Backend-Path"), resp.Header.Get("X-Backend-Proto"))
		}
	}
}
