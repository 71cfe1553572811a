package discovery_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/envgate/envgate/gateway/internal/discovery"
	"github.com/envgate/envgate/gateway/internal/kubetest"
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
	src, err := discovery.NewKubernetes(kubernetes.NewForConfigOrDie(cp.Config), store, discovery.KubernetesConfig{
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
	_ = envs
}
