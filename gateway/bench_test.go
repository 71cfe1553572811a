package main

import (
	"fmt"
	"testing"

	"github.com/envgate/envgate/proto/echopb"
)

// BenchmarkUnary measures one unary call through the gateway and the same
// call made directly, in the same run: the ratio is the gateway's cost.
func BenchmarkUnary(b *testing.B) {
	be := startBackend(b, "env1")
	gw := startGateway(b, testConfig(b, map[string][]string{"env1": {be.addr}}), nil)
	for _, size := range []int{100, 64 << 10} {
		req := &echopb.EchoRequest{Payload: make([]byte, size), ResponseSize: int32(size)}
		for _, target := range []struct{ name, addr string }{{"direct", be.addr}, {"envgate", gw.Addrs()[0]}} {
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
