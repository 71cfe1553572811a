package discovery

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer is a real DNS server on 127.0.0.1 (UDP) answering A and SRV
// questions from a table the test changes, as cluster DNS would for a
// headless Service.
type dnsServer struct {
	addr string
	mu   sync.Mutex
	a    map[string][]string                 // name -> IPv4 addresses
	srv  map[string][]dnsmessage.SRVResource // name -> SRV records
}

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{addr: pc.LocalAddr().String(), a: map[string][]string{}, srv: map[string][]dnsmessage.SRVResource{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := s.answer(buf[:n]); resp != nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
	t.Cleanup(func() { _ = pc.Close(); <-done })
	return s
}

func (s *dnsServer) answer(req []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	name := strings.TrimSuffix(q.Name.String(), ".")
	s.mu.Lock()
	defer s.mu.Unlock()
	_, hasA := s.a[name]
	_, hasSRV := s.srv[name]
	rcode := dnsmessage.RCodeSuccess
	if !hasA && !hasSRV {
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RCode: rcode})
	b.EnableCompression()
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
	switch q.Type {
	case dnsmessage.TypeA:
		for _, ip := range s.a[name] {
			var a [4]byte
			copy(a[:], net.ParseIP(ip).To4())
			_ = b.AResource(rh, dnsmessage.AResource{A: a})
		}
	case dnsmessage.TypeSRV:
		for _, r := range s.srv[name] {
			_ = b.SRVResource(rh, r)
		}
	}
	out, _ := b.Finish()
	return out
}

func (s *dnsServer) set(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

func (s *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", s.addr)
	}}
}

func TestDNSSourceResolvesAndFollows(t *testing.T) {
	dns := startDNS(t)
	svc := "app-service.env1.svc.cluster.local"
	dns.set(func() {
		// A headless Service: one SRV record per ready pod, each with its A record.
		dns.srv["_grpc._tcp."+svc] = []dnsmessage.SRVResource{
			{Port: 50051, Target: dnsmessage.MustNewName("pod-a." + svc + ".")},
			{Port: 50051, Target: dnsmessage.MustNewName("pod-b." + svc + ".")},
		}
		dns.a["pod-a."+svc] = []string{"192.0.2.1"}
		dns.a["pod-b."+svc] = []string{"192.0.2.2"}
		dns.a[svc] = []string{"192.0.2.1", "192.0.2.2"}
	})
	for name, tc := range map[string]struct {
		port string
		want []string
	}{
		"named port by SRV": {"grpc", []string{"192.0.2.1:50051", "192.0.2.2:50051"}},
		"port number by A":  {"50051", []string{"192.0.2.1:50051", "192.0.2.2:50051"}},
	} {
		t.Run(name, func(t *testing.T) {
			store := NewStore()
			src := NewDNS(store, DNSConfig{Names: map[string]string{"k": svc}, Port: tc.port, Every: 20 * time.Millisecond}, dns.resolver(), slog.New(slog.DiscardHandler))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- src.Run(ctx) }()
			defer func() { cancel(); <-done }()
			waitFor(t, "first resolution", func() bool { return store.Synced() })
			if eps, _ := store.Get("k"); !slices.Equal(eps, tc.want) {
				t.Fatalf("endpoints %v, want %v", eps, tc.want)
			}
		})
	}

	t.Run("changes and removal are followed", func(t *testing.T) {
		store := NewStore()
		src := NewDNS(store, DNSConfig{Names: map[string]string{"k": svc}, Port: "50051", Every: 20 * time.Millisecond}, dns.resolver(), slog.New(slog.DiscardHandler))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx) }()
		defer func() { cancel(); <-done }()
		waitFor(t, "first resolution", func() bool { return store.Synced() })
		dns.set(func() { dns.a[svc] = []string{"192.0.2.3"} })
		waitFor(t, "the new address", func() bool { eps, _ := store.Get("k"); return slices.Equal(eps, Endpoints{"192.0.2.3:50051"}) })
		dns.set(func() { delete(dns.a, svc); delete(dns.srv, "_grpc._tcp."+svc) })
		waitFor(t, "the service gone (NXDOMAIN)", func() bool { _, ok := store.Get("k"); return !ok })
	})
}

// waitFor polls cond until it holds or 30s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
