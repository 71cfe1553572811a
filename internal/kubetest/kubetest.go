// Package kubetest runs a real Kubernetes control plane for tests: etcd,
// kube-apiserver (RBAC on, service-account tokens) and kube-controller-manager
// (the EndpointSlice, ServiceAccount and Namespace controllers), all on
// loopback. It follows envtest's conventions: KUBEBUILDER_ASSETS names a
// directory holding kube-apiserver and etcd; otherwise ./bin (make kube)
// and etcd on PATH. A missing binary fails the test: it never skips.
package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ControlPlane is a running etcd, kube-apiserver and kube-controller-manager.
type ControlPlane struct {
	// Admin is a client with full rights (system:masters).
	Admin  kubernetes.Interface
	Config *rest.Config // the admin's
	// URL is the API server that StopAPIServer stops, and the one service
	// account configs point to.
	URL string
	// With Options.SecondAPIServer, Admin and the controller manager use a
	// second kube-apiserver on the same etcd, so the cluster goes on
	// changing while the first is stopped.
	secondURL string

	dir       string
	caPEM     []byte
	apiserver *proc
	apiArgs   []string
	apiBin    string
	t         testing.TB
}

type proc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
}

// binary finds a control-plane binary.
func binary(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if root, err := repoRoot(); err == nil {
		p := filepath.Join(root, "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("%s not found in $KUBEBUILDER_ASSETS, ./bin or PATH: run `make test` (it builds kube-apiserver and kube-controller-manager and installs etcd)", name)
	return ""
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "hack")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no repository root above %s", dir)
		}
		dir = parent
	}
}

// FreePort returns a loopback port that was free a moment ago, for programs
// that must be told their port.
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

func start(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), out: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &lockedWriter{w: p.out}, &lockedWriter{w: p.out}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM) // our own child, by PID
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Options change what Start runs.
type Options struct {
	// SecondAPIServer runs a second kube-apiserver for the admin client and
	// the controller manager.
	SecondAPIServer bool
}

// Start runs a control plane until the test ends.
func Start(t testing.TB, opts ...Options) *ControlPlane {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	dir := t.TempDir()
	cp := &ControlPlane{dir: dir, t: t}
	etcdBin, apiBin, kcmBin := binary(t, "etcd"), binary(t, "kube-apiserver"), binary(t, "kube-controller-manager")

	// etcd
	clientPort, peerPort := FreePort(t), FreePort(t)
	etcdURL := "http://127.0.0.1:" + clientPort
	etcd := start(t, etcdBin, "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:"+peerPort,
		"--initial-advertise-peer-urls", "http://127.0.0.1:"+peerPort,
		"--initial-cluster", "default=http://127.0.0.1:"+peerPort,
		"--unsafe-no-fsync")
	t.Cleanup(func() {
		etcd.stop()
		if t.Failed() {
			t.Logf("etcd output:\n%s", tail(etcd.out.String(), 3000))
		}
	})

	// certificates: a CA, the apiserver's serving cert, the admin's client
	// cert, and the service-account signing key.
	ca, caKey := newCA(t)
	cp.caPEM = pemCert(ca.Raw)
	servingCert, servingKey := issue(t, ca, caKey, "kube-apiserver", nil, []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost", "kubernetes.default.svc"}, x509.ExtKeyUsageServerAuth)
	adminCert, adminKey := issue(t, ca, caKey, "envgate-test-admin", []string{"system:masters"}, nil, nil, x509.ExtKeyUsageClientAuth)
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	saPub, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	files := map[string][]byte{
		"ca.crt":      cp.caPEM,
		"serving.crt": pemCert(servingCert),
		"serving.key": pemKey(servingKey),
		"sa.key":      pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"sa.pub":      pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	port := FreePort(t)
	cp.URL = "https://127.0.0.1:" + port
	cp.apiBin = apiBin
	args := func(port string) []string {
		return []string{
			"--etcd-servers", etcdURL,
			"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", port,
			"--cert-dir", filepath.Join(dir, "certs-"+port),
			"--tls-cert-file", filepath.Join(dir, "serving.crt"), "--tls-private-key-file", filepath.Join(dir, "serving.key"),
			"--client-ca-file", filepath.Join(dir, "ca.crt"),
			"--authorization-mode", "RBAC",
			"--service-account-issuer", "https://kubernetes.default.svc",
			"--service-account-key-file", filepath.Join(dir, "sa.pub"),
			"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
			"--service-cluster-ip-range", "10.96.0.0/16",
			"--allow-privileged",
			// No kubelets: pods are written by the tests, and the
			// ServiceAccount admission would want the default account.
			"--disable-admission-plugins", "ServiceAccount",
			// The kubernetes Service's endpoints would be 127.0.0.1, which
			// EndpointSlices refuse.
			"--endpoint-reconciler-type", "none",
		}
	}
	cp.apiArgs = args(port)
	cp.apiserver = start(t, apiBin, cp.apiArgs...)
	t.Cleanup(func() {
		cp.apiserver.stop()
		if t.Failed() {
			t.Logf("kube-apiserver output:\n%s", tail(cp.apiserver.out.String(), 5000))
		}
	})
	adminURL := cp.URL
	if o.SecondAPIServer {
		port2 := FreePort(t)
		cp.secondURL = "https://127.0.0.1:" + port2
		adminURL = cp.secondURL
		second := start(t, apiBin, args(port2)...)
		t.Cleanup(second.stop)
	}

	cp.Config = &rest.Config{
		Host:            adminURL,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.caPEM, CertData: pemCert(adminCert), KeyData: pemKey(adminKey)},
		QPS:             500, Burst: 1000,
	}
	cp.Admin = kubernetes.NewForConfigOrDie(cp.Config)
	cp.waitReady(t, cp.Admin, 90*time.Second)
	if o.SecondAPIServer {
		first := *cp.Config
		first.Host = cp.URL
		cp.waitReady(t, kubernetes.NewForConfigOrDie(&first), 90*time.Second)
	}

	if _, err := cp.Admin.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: NodeName}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("node: %v", err)
	}
	adminKubeconfig := cp.WriteKubeconfig(t, "admin", cp.Config)
	kcm := start(t, kcmBin, "--kubeconfig", adminKubeconfig,
		"--controllers", "endpointslice,namespace",
		"--leader-elect=false", "--secure-port=0",
		"--endpointslice-updates-batch-period=0s",
		"--concurrent-service-endpoint-syncs=10")
	t.Cleanup(func() {
		kcm.stop()
		if t.Failed() {
			t.Logf("kube-controller-manager output:\n%s", tail(kcm.out.String(), 3000))
		}
	})
	return cp
}

func (cp *ControlPlane) waitReady(t testing.TB, client kubernetes.Interface, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		b, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(b) == "ok", nil
	})
	if err != nil {
		t.Fatalf("kube-apiserver not ready within %v: %v\n%s", timeout, err, tail(cp.apiserver.out.String(), 3000))
	}
}

// StopAPIServer stops kube-apiserver (etcd and the controllers go on).
func (cp *ControlPlane) StopAPIServer() { cp.apiserver.stop() }

// RestartAPIServer starts kube-apiserver again on the same address and waits
// until it is ready.
func (cp *ControlPlane) RestartAPIServer(t testing.TB) {
	t.Helper()
	cp.apiserver = start(t, cp.apiBin, cp.apiArgs...)
	t.Cleanup(cp.apiserver.stop)
	first := *cp.Config
	first.Host = cp.URL
	cp.waitReady(t, kubernetes.NewForConfigOrDie(&first), 90*time.Second)
}

// WriteKubeconfig writes a kubeconfig for rc and returns its path.
func (cp *ControlPlane) WriteKubeconfig(t testing.TB, name string, rc *rest.Config) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["envgate-test"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthorityData: rc.CAData}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: rc.CertData, ClientKeyData: rc.KeyData, Token: rc.BearerToken}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: "envgate-test", AuthInfo: name}
	cfg.CurrentContext = name
	path := filepath.Join(cp.dir, name+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// ServiceAccountConfig returns a client config that authenticates as the
// service account namespace/name, with a token from the TokenRequest API.
func (cp *ControlPlane) ServiceAccountConfig(t testing.TB, namespace, name string) *rest.Config {
	t.Helper()
	ctx := context.Background()
	exp := int64(3600)
	tr, err := cp.Admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", namespace, name, err)
	}
	return &rest.Config{Host: cp.URL, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: cp.caPEM}}
}

// EnsureNamespace creates a namespace with labels.
func (cp *ControlPlane) EnsureNamespace(t testing.TB, name string, labels map[string]string) {
	t.Helper()
	_, err := cp.Admin.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("namespace %s: %v", name, err)
	}
}

func newCA(t testing.TB) (*x509.Certificate, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "envgate-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

var serial int64 = 1

func issue(t testing.TB, ca *x509.Certificate, caKey *rsa.PrivateKey, cn string, orgs []string, ips []net.IP, dns []string, usage x509.ExtKeyUsage) ([]byte, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: ips, DNSNames: dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemKey(k *rsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// NodeName is the node every test pod is bound to.
const NodeName = "node-1"

// CreateService creates a Service selecting app=<name> with one named port.
func (cp *ControlPlane) CreateService(t testing.TB, ns, name, portName string, port int32) {
	t.Helper()
	cp.CreateServicePorts(t, ns, name, corev1.ServicePort{Name: portName, Port: port, TargetPort: intstrFromString(portName)})
}

// CreateServicePorts creates a Service selecting app=<name> with ports.
func (cp *ControlPlane) CreateServicePorts(t testing.TB, ns, name string, ports ...corev1.ServicePort) {
	t.Helper()
	_, err := cp.Admin.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: ports},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("service %s/%s: %v", ns, name, err)
	}
}

// AddPod creates a pod of app=<app> on NodeName with a container port named
// portName, and sets its status as a kubelet would: Running, podIP ip, and
// Ready as given.
func (cp *ControlPlane) AddPod(t testing.TB, ns, name, app, portName string, port int32, ip string, ready bool) {
	t.Helper()
	cp.AddPodLabeled(t, ns, name, map[string]string{"app": app}, portName, port, ip, ready)
}

// AddPodLabeled is AddPod with the pod's labels (app=<the Service> among
// them, for the Service to select it).
func (cp *ControlPlane) AddPodLabeled(t testing.TB, ns, name string, labels map[string]string, portName string, port int32, ip string, ready bool) {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: NodeName,
			Containers: []corev1.Container{{
				Name: "app", Image: "envgate/echo",
				Ports: []corev1.ContainerPort{{Name: portName, ContainerPort: port}},
			}},
		},
	}
	created, err := cp.Admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("pod %s/%s: %v", ns, name, err)
	}
	created.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		PodIP:     ip,
		PodIPs:    []corev1.PodIP{{IP: ip}},
		HostIP:    "192.0.2.250",
		StartTime: &metav1.Time{Time: time.Now()},
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
			{Type: corev1.PodReady, Status: condition(ready)},
			{Type: corev1.ContainersReady, Status: condition(ready)},
		},
	}
	if _, err := cp.Admin.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("pod %s/%s status: %v", ns, name, err)
	}
}

// SetPodLabel sets one label of a pod, as `kubectl label --overwrite` does.
func (cp *ControlPlane) SetPodLabel(t testing.TB, ns, name, key, value string) {
	t.Helper()
	ctx := context.Background()
	pod, err := cp.Admin.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Labels[key] = value
	if _, err := cp.Admin.CoreV1().Pods(ns).Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("label pod %s/%s: %v", ns, name, err)
	}
}

// SetPodReady flips a pod's Ready condition.
func (cp *ControlPlane) SetPodReady(t testing.TB, ns, name string, ready bool) {
	t.Helper()
	ctx := context.Background()
	pod, err := cp.Admin.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
			pod.Status.Conditions[i].Status = condition(ready)
		}
	}
	if _, err := cp.Admin.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// DeletePod deletes a pod at once (there is no kubelet to wait for).
func (cp *ControlPlane) DeletePod(t testing.TB, ns, name string) {
	t.Helper()
	zero := int64(0)
	if err := cp.Admin.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
}

func condition(b bool) corev1.ConditionStatus {
	if b {
		return corev1.ConditionTrue
	}
	return corev1.ConditionFalse
}

func intstrFromString(s string) intstr.IntOrString { return intstr.FromString(s) }
