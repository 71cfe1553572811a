package metrics

import (
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Concurrent inserts of the same keys make one value per key, which every
// caller gets, and a lookup sees what was added before it.
func TestCowMapOneValuePerKey(t *testing.T) {
	var c cowMap[int, *int]
	var made sync.Map
	var wg sync.WaitGroup
	got := make([][]*int, 8)
	for g := range got {
		got[g] = make([]*int, 50)
		wg.Go(func() {
			for k := range 50 {
				got[g][k] = c.getOrAdd(k, func() *int {
					v := new(int)
					if _, dup := made.LoadOrStore(k, v); dup {
						t.Errorf("key %d made twice", k)
					}
					return v
				})
			}
		})
	}
	wg.Wait()
	for k := range 50 {
		v, ok := c.get(k)
		if !ok {
			t.Fatalf("key %d missing", k)
		}
		for g := range got {
			if got[g][k] != v {
				t.Fatalf("goroutine %d got another value for key %d", g, k)
			}
		}
	}
	if _, ok := c.get(50); ok {
		t.Fatal("a key never added was found")
	}
}

// BenchmarkRequestDone: one HTTP request's metrics, on both cores.
func BenchmarkRequestDone(b *testing.B) {
	m := New(prometheus.NewRegistry())
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.RequestStarted()
			m.RequestDone("env1", 200, 1500000, 0, 120)
		}
	})
}

// BenchmarkCallDone: one gRPC call's metrics, on both cores.
func BenchmarkCallDone(b *testing.B) {
	m := New(prometheus.NewRegistry())
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.CallStarted()
			m.CallDone("env1", "/echo.EchoService/Call", 0, 1500000, 100, 100)
		}
	})
}
