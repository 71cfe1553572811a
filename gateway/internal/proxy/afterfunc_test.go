package proxy

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
)

// callCtx is a call's context that ends by itself and runs functions
// when it does (h2front's stream context under grpcfront's values): no
// cancelCtx under it for context.propagateCancel to find.
type callCtx struct {
	context.Context // Done, Err, Deadline, Value; a cancelCtx hidden from Value
	asked           atomic.Int32
}

func (c *callCtx) AfterFunc(f func()) func() bool {
	c.asked.Add(1)
	return context.AfterFunc(c.Context, f)
}

// Value hides the cancelCtx under it, as h2front's stream context has none.
func (c *callCtx) Value(any) any { return nil }

// The contexts the proxy makes from a call's by adding values (the span,
// the director's outgoing metadata) keep the call's AfterFunc
// (withAfterFunc): a context derived from them, or watching them,
// registers with the call's context instead of costing a goroutine, and
// ends with it. Without it the value context hides the method.
func TestValuesOverTheCallKeepItsAfterFunc(t *testing.T) {
	inner, cancel := context.WithCancel(context.Background())
	call := &callCtx{Context: inner}
	md := metadata.Pairs("k", "v")
	out := withAfterFunc(metadata.NewOutgoingContext(call, md), call)
	if got, _ := metadata.FromOutgoingContext(out); got["k"][0] != "v" {
		t.Fatalf("the values are lost: %v", got)
	}
	derived, stop := context.WithTimeout(out, time.Hour)
	defer stop()
	ran := make(chan struct{})
	context.AfterFunc(out, func() { close(ran) })
	if n := call.asked.Load(); n != 2 {
		t.Fatalf("the call's AfterFunc was asked %d times, want 2 (a derived context and a watch)", n)
	}
	if withAfterFunc(call, call) != context.Context(call) {
		t.Fatal("the call's own context was wrapped")
	}
	plain := context.WithValue(context.Background(), struct{}{}, 1)
	if withAfterFunc(plain, context.Background()) != plain {
		t.Fatal("a context over a call without AfterFunc was wrapped")
	}
	cancel()
	select {
	case <-derived.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the derived context did not end with the call")
	}
	<-ran
	if out.Err() != context.Canceled {
		t.Fatalf("Err %v", out.Err())
	}
}
