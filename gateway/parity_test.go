package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/internal/paritytest"
)

// Every row of the Istio parity table (internal/paritytest, each citing the
// Istio or Envoy source it follows) through a real gateway to real
// backends, one per namespace the row names, and through `gateway
// explain` on the same files: the backend that answers is the row's, or
// the gateway answers UNIMPLEMENTED; explain's decision agrees.
func TestParityTableThroughGatewayAndExplain(t *testing.T) {
	for _, row := range paritytest.Rows {
		t.Run(row.Name, func(t *testing.T) {
			p := startParity(t, row.YAML)
			env, err := p.call(t, row.Req)
			switch {
			case row.Want == "" && (status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "envgate")):
				t.Errorf("call answered by %q (%v), want the gateway's UNIMPLEMENTED (%s)", env, err, row.Cite)
			case row.Want != "" && (err != nil || env != row.Want):
				t.Errorf("call answered by %q (%v), want %s (%s)", env, err, row.Want, row.Cite)
			}
			decision := p.explain(t, row.Req)
			want := "decision: UNIMPLEMENTED"
			if row.Want != "" {
				want = "decision: route to app-service." + row.Want + ".svc.cluster.local"
			}
			if !strings.Contains(decision, want) {
				t.Errorf("gateway explain says\n%s\nwant %q (%s)", decision, want, row.Cite)
			}
		})
	}
}

// Every object Istio's validation refuses is refused by envgate: calls
// find no route, and /routes and `gateway explain` give the reason naming
// the field.
func TestParityRefusalsThroughGatewayAndExplain(t *testing.T) {
	for _, r := range paritytest.Refusals {
		t.Run(r.Name, func(t *testing.T) {
			p := startParity(t, r.YAML)
			req := paritytest.Request{Method: "/x.Y/Z", Authority: "h"}
			if _, err := p.call(t, req); status.Code(err) != codes.Unimplemented {
				t.Errorf("call: %v, want UNIMPLEMENTED: the object is refused (%s)", err, r.Cite)
			}
			var view struct {
				Rejected map[string]string `json:"rejected"`
			}
			if err := json.Unmarshal([]byte(scrape(t, p.gw, "/routes")), &view); err != nil {
				t.Fatal(err)
			}
			if why := view.Rejected["default/a"]; !strings.Contains(why, r.Why) {
				t.Errorf("/routes rejected default/a: %q, want %q (%s)", why, r.Why, r.Cite)
			}
			if out := p.explain(t, req); !strings.Contains(out, "rejected: default/a: ") || !strings.Contains(out, r.Why) {
				t.Errorf("gateway explain says\n%s\nwant default/a rejected for %q", out, r.Why)
			}
		})
	}
}

// parity is a gateway on a row's objects with a backend per namespace.
type parity struct {
	gw      *runningGateway
	cfgFile string
}

var rowNamespace = regexp.MustCompile(`app-service\.([a-z0-9-]+)\.svc\.cluster\.local`)

func startParity(t *testing.T, objects string) *parity {
	t.Helper()
	return startParityWith(t, objects, startNamedBackend)
}

// startParityWith is startParity with backends of start's kind.
func startParityWith(t *testing.T, objects string, start func(*testing.T, string) string) *parity {
	t.Helper()
	dir := t.TempDir()
	vsFile := filepath.Join(dir, "vs.yaml")
	if err := os.WriteFile(vsFile, []byte(objects), 0o600); err != nil {
		t.Fatal(err)
	}
	endpoints := map[string][]string{}
	for _, m := range rowNamespace.FindAllStringSubmatch(objects, -1) {
		if _, ok := endpoints[m[1]]; !ok {
			if addr := start(t, m[1]); addr != "" { // "": a namespace discovery does not know
				endpoints[m[1]] = []string{addr}
			}
		}
	}
	if len(endpoints) == 0 {
		endpoints["unused"] = []string{"127.0.0.1:1"}
	}
	vs := &config.VirtualServices{Files: []string{vsFile}, Gateway: paritytest.Gateway, ProxyNamespace: paritytest.ProxyNamespace}
	cfg := testConfig(t, endpoints)
	cfg.Routing.VirtualServices = vs
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var static strings.Builder
	for ns, addrs := range endpoints {
		fmt.Fprintf(&static, "    %s: [%s]\n", ns, addrs[0])
	}
	cfgFile := filepath.Join(dir, "envgate.yaml")
	cfgYAML := fmt.Sprintf("routing:\n  virtualServices: {files: [%s], gateway: %s, proxyNamespace: %s}\ndiscovery:\n  static:\n%s",
		vsFile, paritytest.Gateway, paritytest.ProxyNamespace, static.String())
	if err := os.WriteFile(cfgFile, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	return &parity{gw: startGateway(t, cfg, nil), cfgFile: cfgFile}
}

// call makes the row's call and returns the namespace of the backend that
// answered it.
func (p *parity) call(t *testing.T, r paritytest.Request) (string, error) {
	t.Helper()
	conn, err := grpc.NewClient(p.gw.Addrs()[0], grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(r.Authority))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.NewOutgoingContext(testCtx(t), metadata.Pairs(r.Headers...))
	var hdr metadata.MD
	err = conn.Invoke(ctx, r.Method, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&hdr))
	return strings.Join(hdr["x-backend-namespace"], ","), err
}

// explain runs `gateway explain` for the request on the same files.
func (p *parity) explain(t *testing.T, r paritytest.Request) string {
	t.Helper()
	args := []string{"explain", "-config", p.cfgFile, "-method", r.Method, "-authority", r.Authority}
	for i := 0; i+1 < len(r.Headers); i += 2 {
		args = append(args, "-H", r.Headers[i]+": "+r.Headers[i+1])
	}
	var out strings.Builder
	if err := run(context.Background(), args, &out, &out); err != nil {
		t.Fatalf("gateway explain: %v\n%s", err, out.String())
	}
	return out.String()
}

// startNamedBackend is a gRPC server that answers every method, saying in
// a response header which namespace it serves.
func startNamedBackend(t *testing.T, namespace string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		if err := ss.SetHeader(metadata.Pairs("x-backend-namespace", namespace)); err != nil {
			return err
		}
		var m emptypb.Empty
		if err := ss.RecvMsg(&m); err != nil {
			return err
		}
		return ss.SendMsg(&m)
	}))
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

// Every HTTP row of the parity table (paths with queries, methods,
// rewrite, redirect, direct response) through a real gateway to real HTTP
// backends, one per namespace, over HTTP/1.1 and h2c: the backend that
// answers, and the path and authority it was sent, are the row's; or the
// gateway's own answer is. Every HTTP refusal is refused with its reason.
func TestHTTPParityThroughGateway(t *testing.T) {
	clients := map[string]*http.Client{
		"HTTP/1.1": {CheckRedirect: noRedirect},
		"h2c":      {Transport: h2cTransport(), CheckRedirect: noRedirect},
	}
	for _, row := range paritytest.HTTPRows {
		t.Run(row.Name, func(t *testing.T) {
			p := startParityWith(t, row.YAML, startHTTPNamedBackend)
			for proto, c := range clients {
				req, err := http.NewRequest(row.Req.Method, "http://"+p.gw.Addrs()[0]+row.Req.Path, nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = row.Req.Authority
				for i := 0; i+1 < len(row.Req.Headers); i += 2 {
					req.Header.Add(row.Req.Headers[i], row.Req.Headers[i+1])
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", proto, err)
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				w := row.Want
				got := paritytest.HTTPAnswer{Status: resp.StatusCode, Env: resp.Header.Get("X-Backend-Namespace"), Path: resp.Header.Get("X-Backend-Path"),
					Location: resp.Header.Get("Location")}
				if w.Host != "" {
					got.Host = resp.Header.Get("X-Backend-Host")
				}
				if got.Env == "" && w.Body != "" {
					got.Body = string(body)
				}
				if got != w {
					t.Errorf("%s: got %+v, want %+v (%s)", proto, got, w, row.Cite)
				}
				if w.Status == 404 && !strings.Contains(string(body), "envgate: no route") {
					t.Errorf("%s: 404 body %q, want envgate's reason", proto, body)
				}
			}
		})
	}
	for _, r := range paritytest.HTTPRefusals {
		t.Run(r.Name, func(t *testing.T) {
			p := startParityWith(t, r.YAML, startHTTPNamedBackend)
			resp, err := http.Get("http://" + p.gw.Addrs()[0] + "/x")
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != 404 {
				t.Errorf("status %d, want 404: the object is refused (%s)", resp.StatusCode, r.Cite)
			}
			var view struct {
				Rejected map[string]string `json:"rejected"`
			}
			if err := json.Unmarshal([]byte(scrape(t, p.gw, "/routes")), &view); err != nil {
				t.Fatal(err)
			}
			if why := view.Rejected["default/a"]; !strings.Contains(why, r.Why) {
				t.Errorf("/routes rejected default/a: %q, want %q (%s)", why, r.Why, r.Cite)
			}
		})
	}
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// startHTTPNamedBackend is an HTTP server that says in response headers
// which namespace it serves and the path and authority it was sent.
func startHTTPNamedBackend(t *testing.T, namespace string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend-Namespace", namespace)
		w.Header().Set("X-Backend-Path", r.RequestURI)
		w.Header().Set("X-Backend-Host", r.Host)
		w.Header().Set("X-Backend-Proto", r.Proto)
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s", namespace, r.RequestURI)
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return lis.Addr().String()
}
