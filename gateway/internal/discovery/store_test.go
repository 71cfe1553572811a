package discovery

import (
	"fmt"
	"slices"
	"testing"
)

func TestStoreNormalizesAndNotifies(t *testing.T) {
	s := NewStore()
	type update struct {
		eps    Endpoints
		exists bool
	}
	var got []update
	cancel := s.Subscribe("svc", func(eps Endpoints, exists bool) { got = append(got, update{eps, exists}) })
	s.Set("svc", []string{"b:1", "a:1", "b:1", ""})
	s.Set("svc", []string{"a:1", "b:1"}) // same set: no notification
	s.Set("other", []string{"c:1"})      // other service: not ours
	s.Set("svc", nil)
	s.Delete("svc")
	cancel()
	s.Set("svc", []string{"z:1"}) // after cancel: not delivered

	want := []update{{nil, false}, {Endpoints{"a:1", "b:1"}, true}, {Endpoints{}, true}, {nil, false}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("updates %v, want %v", got, want)
	}
	if eps, ok := s.Get("svc"); !ok || !slices.Equal(eps, Endpoints{"z:1"}) {
		t.Fatalf("Get = %v, %v", eps, ok)
	}
}

func TestStaticMarksSynced(t *testing.T) {
	s := NewStore()
	if s.Synced() {
		t.Fatal("synced before any source ran")
	}
	Static(s, map[string][]string{"app-service.env1:grpc": {"127.0.0.1:1"}})
	if eps, ok := s.Get("app-service.env1:grpc"); !s.Synced() || !ok || len(eps) != 1 {
		t.Fatalf("synced %v, endpoints %v %v", s.Synced(), eps, ok)
	}
}

// Resolving a call's port is on the call path: a lookup, no allocation.
func BenchmarkResolve(b *testing.B) {
	s := NewStore()
	s.SetPorts("app-service.env1", Ports{Numbers: []int32{80, 9000}, Names: map[string]int32{"grpc": 80, "admin": 9000}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Resolve("app-service.env1", "grpc", "grpc"); err != nil {
			b.Fatal(err)
		}
	}
}
