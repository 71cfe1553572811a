package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/proto/echopb"
)

// BenchmarkUnary measures one unary call through the gateway and the same
// call made directly, in the same run: the ratio is the gateway's cost.
// envgate is the default listener (envgate's own HTTP/2 server and
// grpcfront); envgate-grpcserver has sharedHTTP2 off, so its calls are
// served by gRPC's own server.
func BenchmarkUnary(b *testing.B) {
	be := startBackend(b, "env1")
	cfg := testConfig(b, map[string][]string{"env1": {be.addr}})
	cfg.Listeners = append(cfg.Listeners, config.Listener{Address: "127.0.0.1:0", SharedHTTP2: new(false)})
	gw := startGateway(b, cfg, nil)
	for _, size := range []int{100, 64 << 10} {
		req := &echopb.EchoRequest{Payload: make([]byte, size), ResponseSize: int32(size)}
		for _, target := range []struct{ name, addr string }{{"direct", be.addr}, {"envgate", gw.Addrs()[0]}, {"envgate-grpcserver", gw.Addrs()[1]}} {
			b.Run(fmt.Sprintf("%s/%dB", target.name, size), func(b *testing.B) {
				c := echoClient(b, target.addr)
				ctx := withEnv(b.Context(), "env1")
				b.ReportAllocs()
				b.SetBytes(int64(2 * size))
				b.SetParallelism(25) // 50 concurrent calls on 2 cores
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := c.Call(ctx, req); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// BenchmarkHTTP measures GET / over HTTP/1.1 keep-alive through the
// gateway and directly, in the same run, with a handler that answers as
// the seed's helloserver does.
func BenchmarkHTTP(b *testing.B) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "Hello World!\n")
	}))
	b.Cleanup(be.Close)
	addr := strings.TrimPrefix(be.URL, "http://")
	gw := startGateway(b, testConfig(b, map[string][]string{"env1": {addr}}), nil)
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	for _, target := range []struct {
		name, addr string
		protos     *http.Protocols // nil: HTTP/1.1
	}{{"direct", addr, nil}, {"envgate", gw.Addrs()[0], nil}, {"envgate-h2c", gw.Addrs()[0], h2c}} {
		b.Run(target.name, func(b *testing.B) {
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, Protocols: target.protos}}
			b.Cleanup(c.CloseIdleConnections)
			b.ReportAllocs()
			b.SetParallelism(25)
			b.RunParallel(func(pb *testing.PB) {
				req, _ := http.NewRequest(http.MethodGet, "http://"+target.addr+"/", nil)
				req.Header.Set("env", "env1")
				for pb.Next() {
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		})
	}
}
