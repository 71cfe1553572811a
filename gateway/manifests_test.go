package main

// The manifests under k8s/: every kustomization renders, a real
// kube-apiserver accepts every object it renders, and the Deployment matches
// the configuration the gateway runs with.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/virtualservice"
	"github.com/envgate/envgate/internal/kubetest"
)

// kustomizations are every directory a user applies.
// (k8s/app is the template the envs/* kustomizations stamp into a namespace.)
var kustomizations = []string{"base", "istio", "envs/env1", "envs/env2", "overlays/gke", "overlays/kind", "overlays/istio", "overlays/asm-mtls", "examples/traffic-split", "hello", "overlays/production"}

func renderK8s(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join("..", "k8s", dir))
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range resMap.Resources() {
		// Through JSON, so numbers are int64 as the API machinery expects.
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(b); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, obj)
	}
	return objs
}

// cluster is a control plane with the CRDs the overlays use.
type manifestCluster struct {
	cp     *kubetest.ControlPlane
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func startCluster(t *testing.T) *manifestCluster {
	t.Helper()
	cp := kubetest.Start(t)
	ext := apiextensionsclient.NewForConfigOrDie(cp.Config)
	files := []string{"../hack/crds/backendconfigs.cloud.google.com.yaml", "../hack/crds/managedcertificates.networking.gke.io.yaml",
		"../hack/crds/frontendconfigs.networking.gke.io.yaml", "../bin/crds/istio.yaml", "../bin/crds/monitoring.yaml"}
	ctx := context.Background()
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("%v: run `make test`, which fetches Istio's and the monitoring CRDs into bin/crds", err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(string(b)), 4096)
		for {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := dec.Decode(&crd); err != nil {
				break
			}
			if crd.Name == "" {
				continue
			}
			if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil {
				t.Fatalf("CRD %s: %v", crd.Name, err)
			}
			names = append(names, crd.Name)
		}
	}
	for _, n := range names {
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s not established: %v", n, err)
		}
	}
	dc := discovery.NewDiscoveryClientForConfigOrDie(cp.Config)
	return &manifestCluster{cp: cp, dyn: dynamic.NewForConfigOrDie(cp.Config), mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// dryRun asks the API server to apply obj with strict field validation,
// creating namespaces for real so that namespaced objects can be checked.
func (c *manifestCluster) dryRun(obj *unstructured.Unstructured) error {
	ctx := context.Background()
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s: %w", gvk, err)
	}
	if ns := obj.GetNamespace(); ns != "" {
		nsObj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
		_, err := c.dyn.Resource(nsGVR).Create(ctx, nsObj, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	// Server-side apply, dry run: as `kubectl apply --server-side
	// --dry-run=server --validate=strict`, whether or not the object exists.
	body, err := obj.MarshalJSON()
	if err != nil {
		return err
	}
	force := true
	_, err = c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace()).Patch(ctx, obj.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
		DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict", FieldManager: "envgate-test", Force: &force,
	})
	return err
}

var nsGVR = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}

func TestManifests(t *testing.T) {
	c := startCluster(t)

	t.Run("every object of every kustomization is accepted", func(t *testing.T) {
		for _, dir := range kustomizations {
			objs := renderK8s(t, dir)
			if len(objs) == 0 {
				t.Errorf("%s renders nothing", dir)
			}
			for _, obj := range objs {
				if err := c.dryRun(obj); err != nil {
					t.Errorf("%s: %s %s/%s refused: %v", dir, obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
				}
			}
		}
	})

	t.Run("a misspelled field is refused", func(t *testing.T) {
		for _, tc := range []struct {
			dir, kind string
			path      []string // the field to misspell
		}{
			{"overlays/gke", "BackendConfig", []string{"spec", "healthCheck", "requestPath"}},
			{"overlays/gke", "ManagedCertificate", []string{"spec", "domains"}},
			{"overlays/istio", "VirtualService", []string{"spec", "gateways"}},
			{"overlays/istio", "Gateway", []string{"spec", "selector"}},
			{"base", "Deployment", []string{"spec", "strategy"}},
		} {
			obj := findKind(t, renderK8s(t, tc.dir), tc.kind)
			v, found, err := unstructured.NestedFieldNoCopy(obj.Object, tc.path...)
			if err != nil || !found {
				t.Fatalf("%s %s has no %v", tc.dir, tc.kind, tc.path)
			}
			unstructured.RemoveNestedField(obj.Object, tc.path...)
			typo := append(append([]string{}, tc.path[:len(tc.path)-1]...), tc.path[len(tc.path)-1]+"x")
			if err := unstructured.SetNestedField(obj.Object, v, typo...); err != nil {
				t.Fatal(err)
			}
			err = c.dryRun(obj)
			if err == nil || !strings.Contains(err.Error(), "."+strings.Join(typo, ".")+": field not declared in schema") {
				t.Errorf("%s with %s: %v, want the field refused", tc.kind, strings.Join(typo, "."), err)
			}
		}
	})
}

// The Deployment's probes, ports and grace period match the configuration
// the gateway runs with, in every overlay.
func TestDeploymentMatchesGatewayConfig(t *testing.T) {
	for _, dir := range []string{"base", "overlays/gke", "overlays/kind", "overlays/istio", "overlays/asm-mtls"} {
		t.Run(dir, func(t *testing.T) {
			objs := renderK8s(t, dir)
			cm := findKind(t, objs, "ConfigMap")
			raw, _, _ := unstructured.NestedString(cm.Object, "data", "config.yaml")
			cfg, err := config.Parse([]byte(raw))
			if err != nil {
				t.Fatalf("the ConfigMap's config.yaml: %v", err)
			}
			dep := findKind(t, objs, "Deployment")
			spec := dep.Object["spec"].(map[string]any)
			pod := spec["template"].(map[string]any)["spec"].(map[string]any)
			grace, _ := pod["terminationGracePeriodSeconds"].(int64)
			if need := cfg.DrainDelay + cfg.ShutdownGrace; time.Duration(grace)*time.Second <= need {
				t.Errorf("terminationGracePeriodSeconds %d does not cover drainDelay+shutdownGrace %v", grace, need)
			}
			if mu, _, _ := unstructured.NestedFieldNoCopy(spec, "strategy", "rollingUpdate", "maxUnavailable"); fmt.Sprint(mu) != "0" {
				t.Errorf("maxUnavailable %v, want 0", mu)
			}
			ctr := pod["containers"].([]any)[0].(map[string]any)
			ports := map[string]int64{}
			for _, p := range ctr["ports"].([]any) {
				p := p.(map[string]any)
				ports[p["name"].(string)] = p["containerPort"].(int64)
			}
			_, adminPort, _ := strings.Cut(cfg.Admin.Address, ":")
			if fmt.Sprint(ports["status"]) != adminPort {
				t.Errorf("status port %d, admin listens on %s", ports["status"], cfg.Admin.Address)
			}
			for _, l := range cfg.Listeners {
				_, p, _ := strings.Cut(l.Address, ":")
				found := false
				for _, cp := range ports {
					found = found || fmt.Sprint(cp) == p
				}
				if !found {
					t.Errorf("listener %s has no container port", l.Address)
				}
			}
			// VirtualService files come from the ConfigMap (mounted at
			// /etc/envgate), apply whole, and send only to services
			// discovery follows.
			if v := cfg.Routing.VirtualServices; v != nil && !v.Kubernetes {
				var objs []*virtualservice.Object
				for _, f := range v.Files {
					key, ok := strings.CutPrefix(f, "/etc/envgate/")
					raw, found, _ := unstructured.NestedString(cm.Object, "data", key)
					if !ok || !found {
						t.Fatalf("virtualServices file %s is not a key of the ConfigMap mounted at /etc/envgate", f)
					}
					o, err := virtualservice.Parse(strings.NewReader(raw), v.Namespace)
					if err != nil {
						t.Fatal(err)
					}
					objs = append(objs, o...)
				}
				res := virtualservice.Build(objs, vsOptions(cfg))
				if len(res.Applied) == 0 || len(res.Rejected) > 0 || len(res.Unbound) > 0 {
					t.Errorf("VirtualServices: applied %v, rejected %v, unbound %v", res.Applied, res.Rejected, res.Unbound)
				}
			}
			probe, _, _ := unstructured.NestedMap(ctr, "readinessProbe", "httpGet")
			if probe["path"] != "/healthz/ready" || probe["port"] != "status" {
				t.Errorf("readiness probe %v", probe)
			}
			if nonRoot, _, _ := unstructured.NestedBool(pod, "securityContext", "runAsNonRoot"); !nonRoot {
				t.Error("pod may run as root")
			}
		})
	}
}

func TestGKEOverlayWiring(t *testing.T) {
	objs := renderK8s(t, "overlays/gke")
	svc := findKind(t, objs, "Service")
	ann := svc.GetAnnotations()
	for k, want := range map[string]string{
		"cloud.google.com/neg":            `{"ingress": true}`,
		"cloud.google.com/app-protocols":  `{"https":"HTTP2"}`,
		"cloud.google.com/backend-config": `{"default": "ingress-backendconfig"}`,
	} {
		if ann[k] != want {
			t.Errorf("Service annotation %s = %q, want %q", k, ann[k], want)
		}
	}
	bc := findKind(t, objs, "BackendConfig")
	hc, _, _ := unstructured.NestedMap(bc.Object, "spec", "healthCheck")
	if hc["requestPath"] != "/healthz/ready" || fmt.Sprint(hc["port"]) != "15021" || hc["type"] != "HTTP" {
		t.Errorf("BackendConfig health check %v", hc)
	}
	ing := findKind(t, objs, "Ingress")
	if ing.GetAnnotations()["kubernetes.io/ingress.class"] != "gce" || ing.GetAnnotations()["networking.gke.io/managed-certificates"] != "gke-ingress-cert" {
		t.Errorf("Ingress annotations %v", ing.GetAnnotations())
	}
	cm := findKind(t, objs, "ConfigMap")
	raw, _, _ := unstructured.NestedString(cm.Object, "data", "config.yaml")
	cfg, err := config.Parse([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listeners[0].TLS == nil || !strings.HasPrefix(cfg.Listeners[0].TLS.CertFile, "/etc/envgate/tls/") {
		t.Errorf("the TLS listener does not read the mounted edge2mesh Secret: %+v", cfg.Listeners[0])
	}
}

func findKind(t *testing.T, objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind {
			return o
		}
	}
	t.Fatalf("no %s rendered", kind)
	return nil
}

// The ASM overlay's pieces agree with each other (Issue 12, point 4): the
// certificate-sharing sidecar writes where envgate reads (OUTPUT_CERTS, the
// userVolumeMount, envgate's mount and upstream.mesh.certDir are one
// directory), envgate dials ISTIO_MUTUAL, and every environment namespace
// has PeerAuthentication STRICT, an AuthorizationPolicy letting envgate's
// SPIFFE identity (its ServiceAccount's) in, and an ISTIO_MUTUAL
// DestinationRule. Server-side dry-run of every object against Istio's
// CRDs is in TestManifests.
func TestASMOverlayWiring(t *testing.T) {
	objs := renderK8s(t, "overlays/asm-mtls")
	cm := findKind(t, objs, "ConfigMap")
	raw, _, _ := unstructured.NestedString(cm.Object, "data", "config.yaml")
	cfg, err := config.Parse([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream.TLS.Mode != config.TLSIstioMutual {
		t.Errorf("upstream.tls.mode %q, want ISTIO_MUTUAL", cfg.Upstream.TLS.Mode)
	}
	dir := cfg.Upstream.Mesh.CertDir
	dep := findKind(t, objs, "Deployment")
	ann, _, _ := unstructured.NestedStringMap(dep.Object, "spec", "template", "metadata", "annotations")
	if !strings.Contains(ann["proxy.istio.io/config"], "OUTPUT_CERTS: "+dir) {
		t.Errorf("proxy.istio.io/config %q does not write to %s", ann["proxy.istio.io/config"], dir)
	}
	if !strings.Contains(ann["sidecar.istio.io/userVolumeMount"], `"mountPath": "`+dir+`"`) {
		t.Errorf("userVolumeMount %q does not mount %s", ann["sidecar.istio.io/userVolumeMount"], dir)
	}
	if ann["traffic.sidecar.istio.io/includeInboundPorts"] != "" || ann["traffic.sidecar.istio.io/includeOutboundIPRanges"] != "" {
		t.Error("the sidecar intercepts traffic")
	}
	ctrs, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	mounted := false
	for _, m := range ctrs[0].(map[string]any)["volumeMounts"].([]any) {
		mounted = mounted || m.(map[string]any)["mountPath"] == dir
	}
	if !mounted {
		t.Errorf("envgate does not mount %s", dir)
	}
	sa, _, _ := unstructured.NestedString(dep.Object, "spec", "template", "spec", "serviceAccountName")
	principal := cfg.Upstream.Mesh.TrustDomain + "/ns/" + dep.GetNamespace() + "/sa/" + sa
	for _, env := range []string{"env1", "env2"} {
		var strict, allowed, mtls bool
		for _, o := range objs {
			if o.GetNamespace() != env {
				continue
			}
			switch o.GetKind() {
			case "PeerAuthentication":
				mode, _, _ := unstructured.NestedString(o.Object, "spec", "mtls", "mode")
				strict = mode == "STRICT"
			case "AuthorizationPolicy":
				allowed = strings.Contains(fmt.Sprint(o.Object["spec"]), principal)
			case "DestinationRule":
				mode, _, _ := unstructured.NestedString(o.Object, "spec", "trafficPolicy", "tls", "mode")
				mtls = mode == "ISTIO_MUTUAL"
			}
		}
		if !strict || !allowed || !mtls {
			t.Errorf("%s: PeerAuthentication STRICT %v, %s allowed %v, DestinationRule ISTIO_MUTUAL %v", env, strict, principal, allowed, mtls)
		}
	}
}
