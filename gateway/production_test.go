package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/envgate/envgate/gateway/internal/config"
)

func findNamed(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

func num(t *testing.T, o *unstructured.Unstructured, path ...string) int64 {
	t.Helper()
	v, found, err := unstructured.NestedInt64(o.Object, path...)
	if !found || err != nil {
		t.Fatalf("%s %s: no %s (%v)", o.GetKind(), o.GetName(), strings.Join(path, "."), err)
	}
	return v
}

// Issue 14, point 5: the production overlay's pieces agree with each other
// and with the gateway's configuration. Server-side dry-run of every
// object (with the GKE, Istio and monitoring CRDs) is in TestManifests.
func TestProductionOverlay(t *testing.T) {
	objs := renderK8s(t, "overlays/production")
	dep := findNamed(t, objs, "Deployment", "envgate")
	labels, _, _ := unstructured.NestedStringMap(dep.Object, "spec", "template", "metadata", "labels")
	selects := func(o *unstructured.Unstructured, path ...string) {
		sel, _, _ := unstructured.NestedStringMap(o.Object, path...)
		if len(sel) == 0 {
			t.Errorf("%s %s selects nothing", o.GetKind(), o.GetName())
		}
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("%s %s selects %s=%s, which the gateway's pods lack", o.GetKind(), o.GetName(), k, v)
			}
		}
	}

	pdb := findNamed(t, objs, "PodDisruptionBudget", "envgate")
	selects(pdb, "spec", "selector", "matchLabels")
	hpa := findNamed(t, objs, "HorizontalPodAutoscaler", "envgate")
	if target, _, _ := unstructured.NestedString(hpa.Object, "spec", "scaleTargetRef", "name"); target != dep.GetName() {
		t.Errorf("the autoscaler scales %q", target)
	}
	minReplicas := num(t, hpa, "spec", "minReplicas")
	if minReplicas < 2 || num(t, dep, "spec", "replicas") != minReplicas {
		t.Errorf("replicas %d, autoscaler minimum %d", num(t, dep, "spec", "replicas"), minReplicas)
	}
	if max := num(t, pdb, "spec", "maxUnavailable"); max >= minReplicas {
		t.Errorf("the budget lets %d of %d pods go at once", max, minReplicas)
	}
	spread, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "topologySpreadConstraints")
	keys := map[string]bool{}
	for _, c := range spread {
		keys[c.(map[string]any)["topologyKey"].(string)] = true
	}
	if !keys["topology.kubernetes.io/zone"] || !keys["kubernetes.io/hostname"] {
		t.Errorf("spread over %v, want zones and nodes", keys)
	}

	ctrs, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	ready := &unstructured.Unstructured{Object: ctrs[0].(map[string]any)["readinessProbe"].(map[string]any)}
	period, failures := num(t, ready, "periodSeconds"), num(t, ready, "failureThreshold")
	if failures < 2 || period*failures < 10 {
		t.Errorf("readiness flips after %d x %ds", failures, period)
	}

	// The gateway keeps serving for drainDelay after it turns unready; the
	// load balancer must stop sending within it.
	cm := findKind(t, objs, "ConfigMap")
	if !strings.HasPrefix(cm.GetName(), "envgate-config-") {
		t.Errorf("the configuration ConfigMap %q is not generated (no content hash in its name)", cm.GetName())
	}
	vols, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "volumes")
	if !strings.Contains(fmt.Sprint(vols), cm.GetName()) {
		t.Errorf("the Deployment mounts %v, not %s", vols, cm.GetName())
	}
	raw, _, _ := unstructured.NestedString(cm.Object, "data", "config.yaml")
	cfg, err := config.Parse([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	bc := findNamed(t, objs, "BackendConfig", "ingress-backendconfig")
	interval, timeout := num(t, bc, "spec", "healthCheck", "checkIntervalSec"), num(t, bc, "spec", "healthCheck", "timeoutSec")
	unhealthy := num(t, bc, "spec", "healthCheck", "unhealthyThreshold")
	if lbStops := time.Duration(interval*unhealthy+timeout) * time.Second; lbStops >= cfg.DrainDelay {
		t.Errorf("the load balancer stops sending after %v (%ds x %d + %ds), not within drainDelay %v", lbStops, interval, unhealthy, timeout, cfg.DrainDelay)
	}
	if drain := time.Duration(num(t, bc, "spec", "connectionDraining", "drainingTimeoutSec")) * time.Second; drain > cfg.ShutdownGrace {
		t.Errorf("connection draining %v outlasts shutdownGrace %v", drain, cfg.ShutdownGrace)
	}
	if grace := time.Duration(num(t, dep, "spec", "template", "spec", "terminationGracePeriodSeconds")) * time.Second; grace < cfg.DrainDelay+cfg.ShutdownGrace {
		t.Errorf("terminationGracePeriodSeconds %v < drainDelay + shutdownGrace", grace)
	}

	ing := findNamed(t, objs, "Ingress", "envgate-ingress")
	ann := ing.GetAnnotations()
	if ann["kubernetes.io/ingress.allow-http"] != "false" {
		t.Error("the Ingress serves plain HTTP")
	}
	fc := findNamed(t, objs, "FrontendConfig", ann["networking.gke.io/v1beta1.FrontendConfig"])
	if p, _, _ := unstructured.NestedString(fc.Object, "spec", "sslPolicy"); p == "" {
		t.Error("no SSL policy")
	}
	ns := findNamed(t, objs, "Namespace", "envgate-system")
	if ns.GetLabels()["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace labels %v", ns.GetLabels())
	}
	np := findNamed(t, objs, "NetworkPolicy", "envgate")
	selects(np, "spec", "podSelector", "matchLabels")
	for _, kind := range []string{"PodMonitoring", "ServiceMonitor"} {
		findKind(t, objs, kind)
	}
	selects(findNamed(t, objs, "PodMonitoring", "envgate"), "spec", "selector", "matchLabels")
	selects(findNamed(t, objs, "Service", "envgate-metrics"), "spec", "selector")

	// Every environment accepts traffic only from envgate (and the mesh).
	for _, env := range []string{"envs/env1", "envs/env2"} {
		np := findNamed(t, renderK8s(t, env), "NetworkPolicy", "only-from-envgate")
		if !strings.Contains(fmt.Sprint(np.Object["spec"]), "app:envgate") {
			t.Errorf("%s: %v", env, np.Object["spec"])
		}
	}
}

// Issue 14, point 5: the Istio objects applied next to the gke overlay
// leave envgate's objects as the gke overlay made them (before, they came
// with the base and replaced the gke Service's NEG annotations and the
// ConfigMap's TLS listener); and read access to VirtualServices is granted
// exactly where a configuration watches them.
func TestIstioBesideGKEAndVirtualServiceRBAC(t *testing.T) {
	gke := map[string]bool{}
	for _, o := range renderK8s(t, "overlays/gke") {
		gke[o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName()] = true
	}
	for _, o := range renderK8s(t, "istio") {
		if gke[o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName()] {
			t.Errorf("k8s/istio replaces the gke overlay's %s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
		}
		if o.GetAPIVersion() != "networking.istio.io/v1beta1" && !strings.HasPrefix(o.GetAPIVersion(), "networking.istio.io/") {
			t.Errorf("k8s/istio holds a %s", o.GetKind())
		}
	}
	for _, dir := range []string{"base", "overlays/gke", "overlays/kind", "overlays/istio", "overlays/asm-mtls", "overlays/production"} {
		objs := renderK8s(t, dir)
		raw, _, _ := unstructured.NestedString(findKind(t, objs, "ConfigMap").Object, "data", "config.yaml")
		cfg, err := config.Parse([]byte(raw))
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		watches := cfg.Routing.VirtualServices != nil && cfg.Routing.VirtualServices.Kubernetes
		granted := false
		for _, o := range objs {
			if o.GetKind() == "ClusterRole" && strings.Contains(fmt.Sprint(o.Object["rules"]), "virtualservices") {
				granted = true
			}
		}
		if watches != granted {
			t.Errorf("%s: watches VirtualServices %v, granted their read %v", dir, watches, granted)
		}
	}
}
