package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"github.com/envgate/envgate/internal/testca"
	"github.com/envgate/envgate/proto/echopb"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run the real programs: the gateway and echo binaries built from
// this tree, and the pinned grpcurl the Makefile installs.

// dockerBuildLine returns the go build command of a Dockerfile's build
// stage, with the cache mounts dropped and its continuation lines joined.
func dockerBuildLine(root, dockerfile string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, dockerfile))
	if err != nil {
		return "", err
	}
	joined := strings.ReplaceAll(string(b), "\\\n", " ")
	for _, l := range strings.Split(joined, "\n") {
		if i := strings.Index(l, "CGO_ENABLED=0 go build"); i >= 0 && strings.HasPrefix(l, "RUN ") {
			return strings.Join(strings.Fields(l[i:]), " "), nil
		}
	}
	return "", fmt.Errorf("%s: no go build line", dockerfile)
}

// buildOnce builds the gateway and echo binaries with the Dockerfiles' own
// build lines (VERSION=test, output in a temporary /out), so the tests run
// what the images contain.
var buildOnce = sync.OnceValues(func() (string, error) {
	root, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "envgate-bin-")
	if err != nil {
		return "", err
	}
	for _, app := range []string{"gateway", "echo", "helloserver", "loadgen"} {
		line, err := dockerBuildLine(root, "Dockerfile."+app)
		if err != nil {
			return "", err
		}
		line = strings.ReplaceAll(line, "${VERSION}", "test")
		line = strings.ReplaceAll(line, "/out/", dir+"/")
		cmd := exec.Command("sh", "-c", line)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("%s: %v\n%s", line, err, out)
		}
	}
	return dir, nil
})

// The Dockerfiles build exactly what `make build` builds.
func TestDockerfilesBuildLikeMake(t *testing.T) {
	root := filepath.Dir(repoBin(t))
	out, err := exec.Command("make", "-s", "-n", "-C", root, "build", "VERSION=v1.2.3", "BIN=/out", "GO=go").Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	makeLines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, app := range []string{"gateway", "echo", "helloserver", "loadgen"} {
		line, err := dockerBuildLine(root, "Dockerfile."+app)
		if err != nil {
			t.Fatal(err)
		}
		want := strings.ReplaceAll(line, "${VERSION}", "v1.2.3")
		if !slices.Contains(makeLines, want) {
			t.Errorf("Dockerfile.%s builds with\n  %s\nbut make build runs\n  %s", app, want, strings.Join(makeLines, "\n  "))
		}
		df, _ := os.ReadFile(filepath.Join(root, "Dockerfile."+app))
		for _, must := range []string{"FROM gcr.io/distroless/static-debian12:nonroot", "USER nonroot:nonroot", "--mount=type=cache,target=/root/.cache/go-build", "--mount=type=cache,target=/go/pkg/mod"} {
			if !strings.Contains(string(df), must) {
				t.Errorf("Dockerfile.%s lacks %q", app, must)
			}
		}
	}
}

func builtBinary(t testing.TB, name string) string {
	t.Helper()
	dir, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// process is a started program whose output is scanned for lines.
type process struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	out   bytes.Buffer
	lines chan string
	done  chan error
}

func startProcess(t testing.TB, env []string, name string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &process{cmd: cmd, lines: make(chan string, 1000), done: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		_ = pw.Close()
		p.done <- err
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // only this test's own child, by PID
		<-p.done
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(name), p.output())
		}
	})
	return p
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitLine returns the submatches of the first output line matching re.
func (p *process) waitLine(t testing.TB, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l := <-p.lines:
			if m := rx.FindStringSubmatch(l); m != nil {
				return m
			}
		case err := <-p.done:
			p.done <- err
			t.Fatalf("process exited (%v) before printing %q", err, re)
		case <-deadline:
			t.Fatalf("no line matching %q within 20s", re)
		}
	}
}

// signalAndWait sends sig and returns the exit error.
func (p *process) signalAndWait(t testing.TB, sig os.Signal) error {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("process did not exit within 30s of the signal")
		return nil
	}
}

// grpcurl runs the pinned grpcurl and returns its output and exit error.
func grpcurl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool(t, "grpcurl"), args...)
	cmd.Dir = filepath.Dir(repoBin(t)) // so -proto proto/echo.proto resolves as in the seed
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestSeedCheckWithRealBinariesAndGrpcurl(t *testing.T) {
	echoBin, gatewayBin := builtBinary(t, "echo"), builtBinary(t, "gateway")
	env1 := startProcess(t, []string{"ENV=env1"}, echoBin, "-addr", "127.0.0.1:0")
	port1 := env1.waitLine(t, `start server\. port:(\d+), env:env1`)[1]
	env2 := startProcess(t, []string{"ENV=env2"}, echoBin, "-addr", "127.0.0.1:0")
	port2 := env2.waitLine(t, `start server\. port:(\d+), env:env2`)[1]

	cert, key := writeCert(t)
	cfgFile := filepath.Join(t.TempDir(), "envgate.yaml")
	cfg := fmt.Sprintf(`
listeners:
  - address: 127.0.0.1:0
  - address: 127.0.0.1:0
    tls: {certFile: %s, keyFile: %s}
admin: {address: 127.0.0.1:0, debugAddress: 127.0.0.1:0}
drainDelay: 100ms
environments: [env1, env2]
discovery:
  static:
    env1: [127.0.0.1:%s]
    env2: [127.0.0.1:%s]
`, cert, key, port1, port2)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := startProcess(t, nil, gatewayBin, "-config", cfgFile)
	h2c := gw.waitLine(t, `"msg":"listening","address":"([^"]+)","tls":false`)[1]
	tlsAddr := gw.waitLine(t, `"msg":"listening","address":"([^"]+)","tls":true`)[1]

	// The seed's command, over TLS as in the seed (here the test's
	// self-signed edge2mesh-like certificate), and over h2c.
	for _, env := range []string{"env1", "env2"} {
		want := fmt.Sprintf("{\n  \"message\": \"Hello World! ServerEnv:%s, ClientEnv:%s\"\n}\n", env, env)
		out, err := grpcurl(t, "-cacert", cert, "-proto", "proto/echo.proto", "-rpc-header", "env: "+env, tlsAddr, "echo.EchoService/Call")
		if err != nil || out != want {
			t.Errorf("TLS %s: %v\n%s\nwant\n%s", env, err, out, want)
		}
		out, err = grpcurl(t, "-plaintext", "-proto", "proto/echo.proto", "-rpc-header", "env: "+env, h2c, "echo.EchoService/Call")
		if err != nil || out != want {
			t.Errorf("h2c %s: %v\n%s", env, err, out)
		}
	}
	env1.waitLine(t, `client request env:env1`)
	env2.waitLine(t, `client request env:env2`)

	// Reflection goes through like any call. grpcurl sends -rpc-header only
	// on the call itself, so listing takes -H (or -reflect-header).
	out, err := grpcurl(t, "-plaintext", "-H", "env: env1", h2c, "list")
	if err != nil || !strings.Contains(out, "echo.EchoService\n") || !strings.Contains(out, "grpc.health.v1.Health\n") {
		t.Errorf("list: %v\n%s", err, out)
	}
	out, err = grpcurl(t, "-plaintext", "-H", "env: env2", "-d", `{"text":"via reflection"}`, h2c, "echo.EchoService/Call")
	if err != nil || !strings.Contains(out, `"echo": "via reflection"`) || !strings.Contains(out, "ServerEnv:env2") {
		t.Errorf("call described by reflection: %v\n%s", err, out)
	}

	// An unknown environment: a clear status, as grpcurl shows it.
	out, err = grpcurl(t, "-plaintext", "-proto", "proto/echo.proto", "-rpc-header", "env: env3", h2c, "echo.EchoService/Call")
	if err == nil || !strings.Contains(out, "Code: Unimplemented") || !strings.Contains(out, `no route for env="env3"`) {
		t.Errorf("unknown env: %v\n%s", err, out)
	}

	// SIGTERM: a graceful stop and exit status 0.
	if err := gw.signalAndWait(t, syscall.SIGTERM); err != nil {
		t.Errorf("gateway exit after SIGTERM: %v", err)
	}
	if err := env1.signalAndWait(t, syscall.SIGTERM); err != nil {
		t.Errorf("echo exit after SIGTERM: %v", err)
	}
}

// The gateway binary must not link client-go's typed clientset or informer
// factories: they pull in every built-in API type, which doubled the binary
// and added 17 MB of resident memory a pod pays even with static discovery.
func TestBinaryLeavesOutTypedKubernetesClients(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "k8s.io/client-go/rest") {
		t.Fatal("go list -deps does not show client-go/rest: the check below would prove nothing")
	}
	for _, dep := range deps {
		switch {
		case dep == "k8s.io/client-go/kubernetes",
			strings.HasPrefix(dep, "k8s.io/client-go/kubernetes/"),
			strings.HasPrefix(dep, "k8s.io/client-go/informers"),
			strings.HasPrefix(dep, "k8s.io/client-go/dynamic/dynamicinformer"):
			t.Errorf("the gateway links %s", dep)
		}
	}
	var apis []string
	for _, dep := range deps {
		if strings.HasPrefix(dep, "k8s.io/api/") {
			apis = append(apis, dep)
		}
	}
	// discovery/v1 (EndpointSlices) and core/v1, which it refers to.
	if len(apis) > 2 {
		t.Errorf("the gateway links API groups beyond discovery/v1: %v", apis)
	}
}

// The echo binary behind TLS (-tls-cert/-tls-key), as the bench's upstream
// TLS rows run it, reached by the gateway binary over upstream TLS SIMPLE.
func TestEchoBinaryBehindTLS(t *testing.T) {
	ca := testca.New(t, "bench CA")
	leaf := ca.Issue(t, testca.Leaf{DNS: []string{"echo.bench"}})
	dir := t.TempDir()
	echoBin, gatewayBin := builtBinary(t, "echo"), builtBinary(t, "gateway")
	echo := startProcess(t, []string{"ENV=env1"}, echoBin, "-addr", "127.0.0.1:0",
		"-tls-cert", writeFile(t, dir, "echo.pem", leaf.CertPEM), "-tls-key", writeFile(t, dir, "echo-key.pem", leaf.KeyPEM))
	port := echo.waitLine(t, `start server\. port:(\d+), env:env1`)[1]
	cfg := fmt.Sprintf("listeners: [{address: 127.0.0.1:0}]\nadmin: {address: \"-\", debugAddress: \"-\"}\nenvironments: [env1]\n"+
		"discovery: {static: {env1: [127.0.0.1:%s]}}\nupstream: {tls: {mode: SIMPLE, caCertificates: %s, sni: echo.bench}}\n",
		port, writeFile(t, dir, "ca.pem", ca.PEM))
	gw := startProcess(t, nil, gatewayBin, "-config", writeFile(t, dir, "envgate.yaml", []byte(cfg)))
	addr := gw.waitLine(t, `"msg":"listening","address":"([^"]+)","tls":false`)[1]
	resp, err := echoClient(t, addr).Call(withEnv(testCtx(t), "env1"), &echopb.EchoRequest{})
	if err != nil || !strings.Contains(resp.GetMessage(), "ServerEnv:env1") {
		t.Fatalf("call through TLS to the echo binary: %v %v", resp, err)
	}
}

// The second seed's app as its document runs it, with the built binaries:
// the helloserver, and loadgen sending to SERVER_ADDR at
// REQUESTS_PER_SECOND (the gateway's HTTP front is issue 13's next part).
func TestSeedHelloAppBinaries(t *testing.T) {
	server := startProcess(t, []string{"ENV=env1"}, builtBinary(t, "helloserver"), "-addr", "127.0.0.1:0")
	server.waitLine(t, `INFO:root:Starting server\.\.\.`)
	addr := server.waitLine(t, `addr=(\S+)`)[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, builtBinary(t, "loadgen"), "-count", "40", "-envs", "env1")
	cmd.Env = append(os.Environ(), "SERVER_ADDR=http://"+addr, "REQUESTS_PER_SECOND=20")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("loadgen: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`\d+ request\(s\) complete to http://`+regexp.QuoteMeta(addr)).Match(out) ||
		!regexp.MustCompile(`(?m)^env1\s+40\s+40\s`).Match(out) {
		t.Fatalf("loadgen output:\n%s", out)
	}
	server.waitLine(t, `INFO:root:GET request, Path: / Headers: Host: `+regexp.QuoteMeta(addr))
}
