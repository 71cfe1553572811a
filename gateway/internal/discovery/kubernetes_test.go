package discovery_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	src, err := discovery.NewKubernetes(cp.Config, store, discovery.KubernetesConfig{
		Service: "app-service", Port: "grpc",
		NamespaceSelector: envLabel + "=true",
		Key:               func(ns string) string { return "app-service." + ns },
		OnEnvironments:    func(e []string) { envs <- e },
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() { cancel(); <-done }()

	eps := func(key string) []string { e, _ := store.Get(key); return e }
	waitUntil(t, "env1's two ready pods", func() bool {
		return slices.Equal(eps("app-service.env1"), []string{"192.0.2.1:50051", "192.0.2.2:50051"})
	})
	if _, ok := store.Get("app-service.kube-tools"); ok {
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
// no namespace rights) and the port may be given by number.
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
	src, err := discovery.NewKubernetes(cp.Config, store, discovery.KubernetesConfig{
		Service: "app-service", Port: "50051", Namespaces: []string{"env1"},
		Key: func(ns string) string { return ns },
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "env1's endpoint", func() bool {
		e, _ := store.Get("env1")
		return slices.Equal(e, []string{"192.0.2.1:50051"})
	})
	if _, ok := store.Get("env2"); ok {
		t.Fatal("an unlisted namespace was published")
	}
}
