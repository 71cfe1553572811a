package grpcfront

import (
	"context"
	"net"
	"runtime"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

type otherKey struct{}

// The call's context answers grpc-go's accessors from one value, passes
// other keys to its parent, is canceled with it, and a context derived
// from it registers with the parent's cancelCtx (no goroutine watching
// it), as through the chain of value contexts it replaces.
func TestCallContextAnswersGRPCsAccessors(t *testing.T) {
	if !ctxKeys.ok {
		t.Fatalf("grpc-go's context keys were not learned (%+v): calls take the chain of value contexts", ctxKeys)
	}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), otherKey{}, "other"))
	p := &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}}
	md := metadata.MD{"env": {"env1"}}
	ts := &transportStream{ss: &serverStream{method: "/pkg.Svc/Do"}}
	var c callContext
	ctx := c.with(parent, p, md, ts)

	if got, ok := peer.FromContext(ctx); !ok || got != p {
		t.Errorf("peer %v %v", got, ok)
	}
	if got, ok := metadata.FromIncomingContext(ctx); !ok || got.Get("env")[0] != "env1" {
		t.Errorf("incoming metadata %v %v", got, ok)
	}
	if got := metadata.ValueFromIncomingContext(ctx, "env"); len(got) != 1 || got[0] != "env1" {
		t.Errorf("ValueFromIncomingContext %v", got)
	}
	if got := grpc.ServerTransportStreamFromContext(ctx); got != ts {
		t.Errorf("transport stream %v", got)
	}
	if m, ok := grpc.Method(ctx); !ok || m != "/pkg.Svc/Do" {
		t.Errorf("method %q %v", m, ok)
	}
	if got := ctx.Value(otherKey{}); got != "other" {
		t.Errorf("the parent's value: %v", got)
	}
	if got := ctx.Value([]int{1}); got != nil { // an uncomparable key is no panic
		t.Errorf("an unknown key: %v", got)
	}

	before := runtime.NumGoroutine()
	var derived []context.Context
	for range 100 {
		d, stop := context.WithCancel(ctx)
		defer stop()
		derived = append(derived, d)
	}
	if n := runtime.NumGoroutine(); n > before+10 {
		t.Errorf("%d goroutines after 100 derived contexts, %d before: they are watched, not registered", n, before)
	}
	cancel()
	for i, d := range derived {
		if d.Err() != context.Canceled { // registered: canceled by the parent's cancel, before it returned
			t.Fatalf("derived %d after the parent's cancel: %v", i, d.Err())
		}
	}
	if ctx.Err() != context.Canceled {
		t.Errorf("the call's context after its parent's cancel: %v", ctx.Err())
	}
	if a := testing.AllocsPerRun(100, func() { c.with(parent, p, md, ts) }); a != 0 {
		t.Errorf("%v allocations to make the call's context, want 0", a)
	}
}
