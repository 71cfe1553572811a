package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The command line as a user meets it, on the built binary: exit codes and
// what is printed where (issue 14, point 6).
func TestCommandLine(t *testing.T) {
	gw := builtBinary(t, "gateway")
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	misspelt := write("misspelt.yaml", "listners:\n  - address: 127.0.0.1:8080\ndiscovery: {static: {env1: ['127.0.0.1:1']}}\n")
	unitless := write("unitless.yaml", "discovery: {static: {env1: ['127.0.0.1:1']}}\ndrainDelay: 5\n")
	empty := write("empty.yaml", "")
	for _, tc := range []struct {
		name   string
		args   []string
		exit   int
		stdout string // a substring of it ("" : not checked)
		stderr string
	}{
		{"version", []string{"version"}, 0, "envgate test\n", ""},
		{"help lists the subcommands", []string{"-h"}, 0, "", "gateway validate [flags] [file...]"},
		{"help as a command", []string{"help"}, 0, "", "gateway explain [flags]"},
		{"explain -h", []string{"explain", "-h"}, 0, "", "-method string"},
		{"validate -h", []string{"validate", "-h"}, 0, "", "istioctl analyze"},
		{"unknown command", []string{"serve"}, 1, "", `unknown command "serve" (commands: explain, validate, version`},
		{"stray argument", []string{"-log-level", "warn", "extra"}, 1, "", `unexpected argument "extra"`},
		{"stray argument to explain", []string{"explain", "-H", "env: env1", "env2"}, 1, "", `explain: unexpected argument "env2"`},
		{"stray argument to version", []string{"version", "now"}, 1, "", `version: unexpected argument "now"`},
		{"unknown flag", []string{"-port", "1"}, 1, "", "flag provided but not defined: -port"},
		{"misspelt key", []string{"-config", misspelt}, 1, "", `line 1: unknown key "listners" at the top level: did you mean "listeners"?`},
		{"duration without a unit", []string{"validate", "-config", unitless}, 1, "", "line 2: drainDelay: 5 has no unit: write 5s"},
		{"empty config", []string{"validate", "-config", empty}, 1, "", "discovery: missing"},
		{"validate the embedded config", []string{"validate"}, 0, "config the embedded configuration: ok", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(gw, tc.args...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			exit := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				exit = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if exit != tc.exit || !strings.Contains(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.stderr) {
				t.Fatalf("gateway %q: exit %d, want %d\nstdout: %s\nstderr: %s\nwant stdout with %q, stderr with %q", tc.args, exit, tc.exit, stdout.String(), stderr.String(), tc.stdout, tc.stderr)
			}
			for _, goTerm := range []string{"config.Config", "time.Duration", "!!int", "panic"} {
				if strings.Contains(stderr.String(), goTerm) {
					t.Errorf("stderr names %q: %s", goTerm, stderr.String())
				}
			}
		})
	}
}

// gateway validate reports what istioctl analyze would of the files, in
// the gateway's terms: a rejected object is an error (exit 1), an object
// bound elsewhere a note, a destination without endpoints a warning.
func TestValidateVirtualServiceFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "envgate.yaml")
	vs := filepath.Join(dir, "vs.yaml")
	if err := os.WriteFile(cfg, []byte(`
discovery: {static: {env1: ['127.0.0.1:1']}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	objects := `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: env1, namespace: default}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
  - match: [{headers: {env: {exact: env1}}}]
    route: [{destination: {host: app-service.env1.svc.cluster.local}}]
  - match: [{headers: {env: {exact: env3}}}]
    route: [{destination: {host: app-service.env3.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/other]
  http: [{route: [{destination: {host: app-service.env1.svc.cluster.local}}]}]
`
	faulty := objects + `---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: faulty, namespace: default}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
  - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: app-service.env1.svc.cluster.local}}]
`
	for _, tc := range []struct {
		name, objects string
		wantErr       bool
		want          []string
	}{
		{"clean", objects, false, []string{
			"config " + cfg + ": ok",
			"virtualservice default/env1: applied",
			"note: virtualservice default/elsewhere not bound to default/common-istio-gateway: spec.gateways [istio-system/other]",
			"warning: default/env1 http[1] sends to app-service.env3, which has no static endpoints",
		}},
		{"a rejected object", faulty, true, []string{
			"error: virtualservice default/faulty rejected:",
			"virtualservice default/env1: applied",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(vs, []byte(tc.objects), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errOut strings.Builder
			err := run(t.Context(), []string{"validate", "-config", cfg, vs}, &out, &errOut)
			if (err != nil) != tc.wantErr || err != nil && !strings.Contains(err.Error(), "1 error(s)") {
				t.Fatalf("err %v, want error %v\n%s", err, tc.wantErr, out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// Issue 14, point 7: -pprof serves Go's profiles on the debug listener;
// without it /debug/pprof/ is not there.
func TestPprofBehindFlag(t *testing.T) {
	path := filepath.Join(t.TempDir(), "envgate.yaml")
	if err := os.WriteFile(path, []byte("listeners: [{address: '127.0.0.1:0'}]\nadmin: {address: '127.0.0.1:0', debugAddress: '127.0.0.1:0'}\ndiscovery: {static: {env1: ['127.0.0.1:1']}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"-config", path}, http.StatusNotFound},
		{[]string{"-config", path, "-pprof"}, http.StatusOK},
	} {
		t.Run(strings.Join(tc.args[2:], " "), func(t *testing.T) {
			p := startProcess(t, nil, builtBinary(t, "gateway"), tc.args...)
			debug := p.waitLine(t, `"msg":"debug listening","address":"([^"]+)"`)[1]
			for _, u := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/profile?seconds=1"} {
				resp, err := http.Get("http://" + debug + u)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Fatalf("%s: %d, want %d", u, resp.StatusCode, tc.want)
				}
				if tc.want == http.StatusOK && u == "/debug/pprof/" && !strings.Contains(string(body), "goroutine") {
					t.Fatalf("%s: not pprof's index:\n%s", u, body)
				}

			}
		})
	}
}

// main turns allocation sampling off (nothing serves the heap profile by
// default); with -pprof, run turns it back on, or /debug/pprof/heap would
// show only what package initialisation allocated.
func TestPprofSamplesAllocations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "envgate.yaml")
	if err := os.WriteFile(path, []byte("listeners: [{address: '127.0.0.1:0'}]\nadmin: {address: '127.0.0.1:0', debugAddress: '127.0.0.1:0'}\ndiscovery: {static: {env1: ['127.0.0.1:1']}}\ndrainDelay: 1ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"-config", path}, 0},
		{[]string{"-config", path, "-pprof"}, 512 << 10},
	} {
		runtime.MemProfileRate = 0 // as main sets it
		ctx, cancel := context.WithCancel(t.Context())
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() { done <- run(ctx, tc.args, pw, pw); pw.Close() }()
		// The listener's line comes after the rate is set: reading it
		// orders the two.
		sc := bufio.NewScanner(pr)
		for sc.Scan() && !strings.Contains(sc.Text(), `"msg":"listening"`) {
		}
		got := runtime.MemProfileRate
		cancel()
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%v: MemProfileRate %d, want %d", tc.args, got, tc.want)
		}
	}
}

// main runs the GOMAXPROCS tuner (procs): an idle gateway is on one P,
// as /metrics says; GOMAXPROCS in the environment turns the tuner off.
func TestBinaryRunsOnOnePWhileIdle(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: nothing to tune")
	}
	path := filepath.Join(t.TempDir(), "envgate.yaml")
	if err := os.WriteFile(path, []byte("listeners: [{address: '127.0.0.1:0'}]\nadmin: {address: '127.0.0.1:0', debugAddress: '127.0.0.1:0'}\ndiscovery: {static: {env1: ['127.0.0.1:1']}}\ndrainDelay: 1ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"tuned", nil, "1"},
		{"GOMAXPROCS set", []string{"GOMAXPROCS=2"}, "2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProcess(t, tc.env, builtBinary(t, "gateway"), "-config", path)
			debug := p.waitLine(t, `"msg":"debug listening","address":"([^"]+)"`)[1]
			// The first interval may be busy starting up: the tuner
			// gives a P back after a calm second, so the count is
			// read until it is the one wanted, for at most 5 s.
			var got string
			for deadline := time.Now().Add(5 * time.Second); got != tc.want && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				got = gomaxprocsOf(t, debug)
			}
			if got != tc.want {
				t.Fatalf("go_sched_gomaxprocs_threads %s, want %s", got, tc.want)
			}
		})
	}
}

// gomaxprocsOf is go_sched_gomaxprocs_threads from the debug listener's
// /metrics.
func gomaxprocsOf(t *testing.T, debug string) string {
	t.Helper()
	resp, err := http.Get("http://" + debug + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`(?m)^go_sched_gomaxprocs_threads (\d+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no go_sched_gomaxprocs_threads in /metrics:\n%s", body)
	}
	return string(m[1])
}
