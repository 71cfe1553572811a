package upstream

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/envgate/envgate/gateway/internal/discovery"
	"github.com/envgate/envgate/gateway/internal/h2client"
)

func startHealthServer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestPoolFollowsDiscovery(t *testing.T) {
	a, b := startHealthServer(t), startHealthServer(t)
	store := discovery.NewStore()
	pool := NewPool(store, slog.New(slog.DiscardHandler), h2client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	runDone := make(chan error, 1)
	runCtx, stopRun := context.WithCancel(ctx)
	go func() { runDone <- pool.Run(runCtx) }()
	defer func() { stopRun(); <-runDone }()

	if _, err := pool.Get(Target{Set: "svc"}); !errors.Is(err, ErrNoHealthyUpstream) {
		t.Fatalf("unknown service: %v", err)
	}
	store.Set("svc", nil)
	if _, err := pool.Get(Target{Set: "svc"}); !errors.Is(err, ErrNoHealthyUpstream) {
		t.Fatalf("no endpoints: %v", err)
	}

	store.Set("svc", []string{a})
	c, err := pool.Get(Target{Set: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	served := func() string {
		var p peer.Peer
		if _, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
			t.Fatal(err)
		}
		return p.Addr.String()
	}
	if got := served(); got != a {
		t.Fatalf("served by %s, want %s", got, a)
	}
	// The endpoint changes: the same connection moves to the new one.
	store.Set("svc", []string{b})
	for served() != b {
		if ctx.Err() != nil {
			t.Fatal("calls never moved to the new endpoint")
		}
	}
	if c2, _ := pool.Get(Target{Set: "svc"}); c2 != c {
		t.Fatal("a new connection was made for the same service")
	}

	// The service disappears: its connection is closed and forgotten.
	store.Delete("svc")
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("client of a removed service not closed")
	}
	if _, err := pool.Get(Target{Set: "svc"}); !errors.Is(err, ErrNoHealthyUpstream) {
		t.Fatalf("removed service: %v", err)
	}
	if pool.Len() != 0 {
		t.Fatalf("%d connections left", pool.Len())
	}
}
