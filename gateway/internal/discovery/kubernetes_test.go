package discovery_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"

	"github.com/envgate/envgate/gateway/internal/discovery"
	"github.com/envgate/envgate/internal/kubetest"
)

const envLabel = "envgate.io/environment"

// waitUntil polls cond until it holds or 60s pass.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runSource runs a Kubernetes source into store until the test ends.
func runSource(t *testing.T, cp *kubetest.ControlPlane, store *discovery.Store, cfg discovery.KubernetesConfig) {
	t.Helper()
	src, err := discovery.NewKubernetes(cp.Config, store, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestKubernetesSourceFollowsTheCluster(t *testing.T) {
	cp := kubetest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	cp.EnsureNamespace(t, "env1", map[string]string{envLabel: "true"})
	cp.EnsureNamespace(t, "kube-tools", nil) // not an environment
	for _, ns := range []string{"env1", "kube-tools"} {
		cp.CreateService(t, ns, "app-service", "grpc", 50051)
		cp.AddPod(t, ns, "app-a", "app-service", "grpc", 50051, "192.0.2.1", true)
	}
	cp.AddPod(t, "env1", "app-b", "app-service", "grpc", 50051, "192.0.2.2", true)
	cp.AddPod(t, "env1", "app-c", "app-service", "grpc", 50051, "192.0.2.3", false)

	store := discovery.NewStore()
	envs := make(chan []string, 100)
	runSource(t, cp, store, discovery.KubernetesConfig{
		Service:           "app-service",
		NamespaceSelector: envLabel + "=true",
		Key:               func(ns string) string { return "app-service." + ns },
		OnEnvironments:    func(e []string) { envs <- e },
	})

	// The Service's one port, 50051 named grpc, keys the set.
	eps := func(key string) []string { e, _ := store.Get(key + ":50051"); return e }
	waitUntil(t, "env1's two ready pods", func() bool {
		return slices.Equal(eps("app-service.env1"), []string{"192.0.2.1:50051", "192.0.2.2:50051"})
	})
	if store.Exists("app-service.kube-tools") {
		t.Fatal("a namespace without the label was published")
	}
	cp.SetPodReady(t, "env1", "app-c", true)
	waitUntil(t, "the third pod once ready", func() bool { return len(eps("app-service.env1")) == 3 })
	cp.DeletePod(t, "env1", "app-a")
	waitUntil(t, "the deleted pod gone", func() bool {
		return slices.Equal(eps("app-service.env1"), []string{"192.0.2.2:50051", "192.0.2.3:50051"})
	})

	// A second slice of the same service (large services have several):
	// its endpoints are added to the first's, duplicates once, not-ready
	// and terminating ones left out.
	yes, no := true, false
	port, name := int32(50051), "grpc"
	extra := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "app-service-extra", Labels: map[string]string{
			discoveryv1.LabelServiceName: "app-service", discoveryv1.LabelManagedBy: "envgate-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"192.0.2.9"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
			{Addresses: []string{"192.0.2.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
			{Addresses: []string{"192.0.2.10"}, Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}},
		},
	}
	if _, err := cp.Admin.DiscoveryV1().EndpointSlices("env1").Create(ctx, extra, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "both slices aggregated", func() bool {
		return slices.Equal(eps("app-service.env1"), []string{"192.0.2.2:50051", "192.0.2.3:50051", "192.0.2.9:50051"})
	})

	// The environments were reported: env1 only.
	var last []string
	for len(envs) > 0 {
		last = <-envs
	}
	if !slices.Equal(last, []string{"env1"}) {
		t.Fatalf("environments %v, want [env1]", last)
	}
}

// With environments listed, no namespace is watched (the gateway then needs
// no namespace rights).
func TestKubernetesSourceWithListedEnvironments(t *testing.T) {
	cp := kubetest.Start(t)
	cp.EnsureNamespace(t, "env1", nil)
	cp.EnsureNamespace(t, "env2", nil)
	for _, ns := range []string{"env1", "env2"} {
		cp.CreateService(t, ns, "app-service", "grpc", 50051)
	}
	cp.AddPod(t, "env1", "a", "app-service", "grpc", 50051, "192.0.2.1", true)
	cp.AddPod(t, "env2", "a", "app-service", "grpc", 50051, "192.0.2.2", true)
	store := discovery.NewStore()
	runSource(t, cp, store, discovery.KubernetesConfig{
		Service: "app-service", Namespaces: []string{"env1"},
		Key: func(ns string) string { return ns },
	})
	waitUntil(t, "env1's endpoint", func() bool {
		e, _ := store.Get("env1:50051")
		return slices.Equal(e, []string{"192.0.2.1:50051"})
	})
	if store.Exists("env2") {
		t.Fatal("an unlisted namespace was published")
	}
}

// A destination's port is the Service's port, as Istio's cluster names it
// (outbound|<service port>||<host>, pilot/pkg/networking/core/route/route.go
// GetDestinationCluster), and the pods are dialed on the port the
// EndpointSlice controller mapped it to: Service port 80 "grpc" -> pods'
// 50051. A port the Service lacks resolves to nothing, even the pods' own
// number.
func TestKubernetesSourceMapsServicePortsToPodPorts(t *testing.T) {
	cp := kubetest.Start(t)
	cp.EnsureNamespace(t, "env1", nil)
	cp.CreateServicePorts(t, "env1", "app-service",
		corev1.ServicePort{Name: "grpc", Port: 80, TargetPort: intstr.FromInt32(50051)},
		corev1.ServicePort{Name: "admin", Port: 9000, TargetPort: intstr.FromInt32(9001)})
	cp.EnsureNamespace(t, "env2", nil)
	cp.CreateServicePorts(t, "env2", "app-service", corev1.ServicePort{Port: 8080, TargetPort: intstr.FromInt32(50051)})
	cp.AddPod(t, "env1", "a", "app-service", "grpc", 50051, "192.0.2.1", true)
	cp.AddPod(t, "env2", "a", "app-service", "grpc", 50051, "192.0.2.2", true)

	store := discovery.NewStore()
	runSource(t, cp, store, discovery.KubernetesConfig{
		Service: "app-service", Namespaces: []string{"env1", "env2"},
		Key: func(ns string) string { return "app-service." + ns },
	})

	dial := func(service, port string) ([]string, error) {
		key, err := store.Resolve(service, port, "grpc")
		if err != nil {
			return nil, err
		}
		eps, _ := store.Get(key)
		return eps, nil
	}
	waitUntil(t, "env1's pod on Service port 80 and env2's on 8080", func() bool {
		eps1, err1 := dial("app-service.env1", "80")
		eps2, err2 := dial("app-service.env2", "8080")
		return err1 == nil && err2 == nil && slices.Equal(eps1, []string{"192.0.2.1:50051"}) && slices.Equal(eps2, []string{"192.0.2.2:50051"})
	})
	for _, c := range []struct {
		service, port string
		want          []string
		noPort        bool
	}{
		{"app-service.env1", "grpc", []string{"192.0.2.1:50051"}, false}, // by name
		{"app-service.env1", "9000", []string{"192.0.2.1:9001"}, false},
		{"app-service.env1", "", []string{"192.0.2.1:50051"}, false}, // two ports: the fallback, grpc
		{"app-service.env1", "50051", nil, true},                     // the pods' port is not the Service's
		{"app-service.env2", "", []string{"192.0.2.2:50051"}, false}, // one port: that one
		{"app-service.env2", "grpc", nil, true},                      // unnamed port
		{"app-service.env2", "8080", []string{"192.0.2.2:50051"}, false},
	} {
		eps, err := dial(c.service, c.port)
		if c.noPort {
			if !errors.Is(err, discovery.ErrNoPort) || !strings.Contains(err.Error(), "its ports:") {
				t.Errorf("%s port %q: err %v, want ErrNoPort listing the ports", c.service, c.port, err)
			}
			continue
		}
		if err != nil || !slices.Equal(eps, c.want) {
			t.Errorf("%s port %q: %v %v, want %v", c.service, c.port, eps, err, c.want)
		}
	}
	if err := cp.Admin.CoreV1().Services("env1").Delete(context.Background(), "app-service", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the deleted Service gone", func() bool {
		_, setLeft := store.Get("app-service.env1:80")
		return !store.Exists("app-service.env1") && !setLeft
	})
}

// Services listed beside the main one are followed in every environment
// and published as "service.namespace", each Service port with the name
// of its protocol (appProtocol, else the port's name); a service not
// listed is not.
func TestKubernetesSourceFollowsOtherServices(t *testing.T) {
	cp := kubetest.Start(t)
	cp.EnsureNamespace(t, "env1", nil)
	cp.CreateServicePorts(t, "env1", "app-service", corev1.ServicePort{Name: "grpc", Port: 80, TargetPort: intstr.FromInt32(50051)})
	h2 := "kubernetes.io/h2c"
	cp.CreateServicePorts(t, "env1", "hellosvc",
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
		corev1.ServicePort{Name: "web", Port: 81, TargetPort: intstr.FromInt32(8081), AppProtocol: &h2})
	cp.CreateServicePorts(t, "env1", "othersvc", corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)})
	cp.AddPod(t, "env1", "a", "app-service", "grpc", 50051, "192.0.2.1", true)
	cp.AddPod(t, "env1", "h", "hellosvc", "http", 8080, "192.0.2.3", true)
	cp.AddPod(t, "env1", "o", "othersvc", "http", 8080, "192.0.2.4", true)

	store := discovery.NewStore()
	runSource(t, cp, store, discovery.KubernetesConfig{
		Service: "app-service", Services: []string{"hellosvc"}, Namespaces: []string{"env1"},
		Key: func(ns string) string { return "app-service." + ns },
	})

	waitUntil(t, "app-service and hellosvc of env1", func() bool {
		a, _ := store.Get("app-service.env1:80")
		h, _ := store.Get("hellosvc.env1:80")
		return slices.Equal(a, []string{"192.0.2.1:50051"}) && slices.Equal(h, []string{"192.0.2.3:8080"})
	})
	set, err := store.Resolve("hellosvc.env1", "http", "grpc")
	if err != nil || set != "hellosvc.env1:80" || store.Protocol(set) != "http" {
		t.Fatalf("hellosvc port http: %q %v, protocol %q", set, err, store.Protocol(set))
	}
	if p := store.Protocol("hellosvc.env1:81"); p != h2 {
		t.Fatalf("hellosvc port 81 protocol %q, want its appProtocol %q", p, h2)
	}
	if store.Exists("othersvc.env1") {
		t.Fatal("othersvc is published though not listed")
	}
}

// An overloaded API server answers 429 (API Priority and Fairness), a
// restarting one refuses connections: client-go retries both, backing off
// up to 30 s. Stopping the source in that state must not wait out the
// backoff: the gateway's shutdown waits for discovery. (A test server
// stands in for the API server here: a real one cannot be made to answer
// 429 to every request on cue.)
func TestKubernetesSourceStopsWhileTheAPIServerRefuses(t *testing.T) {
	const attempts = 3
	var (
		mu      sync.Mutex // guards watches
		watches = map[string]int{}
	)
	backedOff := make(chan string, 16) // a resource path watched `attempts` times
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1" {
			mu.Lock()
			watches[r.URL.Path]++
			if watches[r.URL.Path] == attempts {
				backedOff <- r.URL.Path
			}
			mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"TooManyRequests","code":429,"message":"too many requests"}`)
	}))
	defer srv.Close()

	src, err := discovery.NewKubernetes(&rest.Config{Host: srv.URL}, discovery.NewStore(), discovery.KubernetesConfig{
		Service: "app-service",
		Key:     func(ns string) string { return "app-service." + ns },
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()

	// Every informer (EndpointSlices, Services, pods, namespaces) has
	// failed `attempts` watches: each now sits in a backoff of at least
	// 0.8 s x 2^(attempts-1) = 3.2 s.
	seen := map[string]bool{}
	timeout := time.After(60 * time.Second)
	for len(seen) < 4 {
		select {
		case p := <-backedOff:
			seen[p] = true
		case <-timeout:
			t.Fatalf("informers watched %v, want 4 resources %d times each", watches, attempts)
		}
	}
	cancel()
	stopped := time.Now()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Run returned nil before its caches synced")
		}
		if d := time.Since(stopped); d > time.Second {
			t.Fatalf("Run took %v to stop after its context ended, want well under the backoff", d)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run did not stop")
	}
}
