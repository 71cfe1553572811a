package main

import (
	"context"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// safeBuffer is a log sink read while the server writes.
type safeBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The seed's server, asked with real curl: GET / answers Hello World! with
// both environments, logs the seed's lines, refuses other methods as
// Python's server does, and stops when asked.
func TestHelloserverWithCurl(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out safeBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0"}, func(k string) string { return map[string]string{"ENV": "env1"}[k] }, &out)
	}()
	var addr string
	deadline := time.Now().Add(10 * time.Second)
	for addr == "" {
		if m := regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no listening line:\n%s", out.String())
		} else {
			time.Sleep(5 * time.Millisecond)
		}
	}
	curl := func(args ...string) string {
		t.Helper()
		b, err := exec.Command("curl", append([]string{"-sS", "--max-time", "5"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	if got := curl("-H", "env: env2", "http://"+addr+"/"); got != "Hello World! ServerEnv:env1, ClientEnv:env2\n" {
		t.Errorf("GET /: %q", got)
	}
	if got := curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "http://"+addr+"/"); got != "501" {
		t.Errorf("POST /: %s, want 501", got)
	}
	if got := curl("http://" + addr + "/healthz"); got != "ok\n" {
		t.Errorf("/healthz: %q", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	log := out.String()
	for _, want := range []string{"INFO:root:Starting server...", `"GET / HTTP/1.1" 200 -`, "INFO:root:GET request, Path: / Headers: Host: " + addr, "Env: env2", "server stopped"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

// A request's headers are logged within a bound, however many it sends.
func TestHelloserverLogLineIsBounded(t *testing.T) {
	long := strings.Repeat("x", 8000)
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-A", long)
	r.Header.Set("X-B", long)
	h := headers(r)
	if len(h) > maxLogHeaders+len("...(truncated)") || !strings.HasSuffix(h, "...(truncated)") {
		t.Fatalf("logged %d bytes of headers", len(h))
	}
}
