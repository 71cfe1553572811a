package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/envgate/envgate/echo/echoserver"
)

// row is one environment's summary line: requests, ok, late, dropped.
func row(t *testing.T, out, env string) (n, ok, late, dropped int, errs string) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(env) + `\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+\S+\s+\S+\s*(.*)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no summary row for %s in:\n%s", env, out)
	}
	a, _ := strconv.Atoi(m[1])
	b, _ := strconv.Atoi(m[2])
	c, _ := strconv.Atoi(m[3])
	d, _ := strconv.Atoi(m[4])
	return a, b, c, d, m[5]
}

func runLoadgen(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	var out strings.Builder
	if err := run(context.Background(), args, func(k string) string { return env[k] }, &out); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// The seed's environment variables, open loop at the asked rate, spread
// over two environments by the env header, the seed's line every second
// and a summary per environment; a server's 503s are counted as errors
// under their status.
func TestLoadgenHTTP(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Header.Get("env")]++
		mu.Unlock()
		if r.Header.Get("env") == "env2" {
			http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("Hello World!"))
	}))
	defer srv.Close()
	out := runLoadgen(t, map[string]string{"SERVER_ADDR": srv.URL, "REQUESTS_PER_SECOND": "40"}, "-count", "80", "-envs", "env1,env2")
	for _, want := range []string{"Starting loadgen: ", "request(s) complete to " + srv.URL} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	n1, ok1, _, drop1, _ := row(t, out, "env1")
	n2, ok2, _, _, errs2 := row(t, out, "env2")
	if n1 != 40 || ok1 != 40 || drop1 != 0 || n2 != 40 || ok2 != 0 || !strings.Contains(errs2, "503:40") {
		t.Fatalf("env1 %d/%d, env2 %d/%d %q; want 40 each, env2 all 503:\n%s", ok1, n1, ok2, n2, errs2, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen["env1"] != 40 || seen["env2"] != 40 {
		t.Fatalf("the server saw %v", seen)
	}
}

// A server slower than the rate allows, with one request in flight at
// most: the requests due meanwhile are dropped and counted, and the
// summary says loadgen could not keep up rather than report a lower rate
// as the server's.
func TestLoadgenSaysWhenItCannotKeepUp(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(200 * time.Millisecond):
		}
	}))
	defer srv.Close()
	defer close(release)
	out := runLoadgen(t, nil, "-addr", srv.URL, "-rps", "50", "-count", "25", "-max-inflight", "1")
	n, ok, _, dropped, _ := row(t, out, "(no env)")
	if dropped == 0 || n+dropped != 25 || ok != n || !strings.Contains(out, "loadgen could not keep up") {
		t.Fatalf("%d sent, %d ok, %d dropped; want drops and the warning:\n%s", n, ok, dropped, out)
	}
}

// gRPC: echo.EchoService/Call to a real echo server, with the env header.
func TestLoadgenGRPC(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	echoserver.Register(s, &echoserver.Server{Env: "env1", Addr: lis.Addr().String()})
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(lis) }()
	defer func() { s.Stop(); <-done }()
	out := runLoadgen(t, nil, "-addr", "http://"+lis.Addr().String(), "-protocol", "grpc", "-rps", "100", "-count", "50", "-envs", "env1")
	if n, ok, _, _, _ := row(t, out, "env1"); n != 50 || ok != 50 {
		t.Fatalf("%d of %d OK:\n%s", ok, n, out)
	}
}
