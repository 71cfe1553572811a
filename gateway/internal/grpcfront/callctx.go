package grpcfront

import (
	"context"
	"reflect"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// callContext is a call's context as grpc-go's transport makes it — the
// call's cancelation and deadline, the peer, the incoming metadata and the
// transport stream — in one value rather than a context.WithValue each:
// three allocations a call fewer, and a lookup is one step, not a walk
// through the chain. It answers for grpc-go's own context keys, which
// are unexported: ctxKeys learns them by asking grpc-go's accessors
// (peer.FromContext...) to read a context that notes the key it is asked.
type callContext struct {
	context.Context // the call's cancelCtx or timerCtx: Done, Err, Deadline, and what derives from it
	peer            *peer.Peer
	md              metadata.MD
	ts              grpc.ServerTransportStream
}

// with fills c as the call's context over parent and returns it; without
// the keys (a grpc-go whose accessors the probe did not learn) it is the
// chain of value contexts grpc-go would make.
func (c *callContext) with(parent context.Context, p *peer.Peer, md metadata.MD, ts grpc.ServerTransportStream) context.Context {
	if !ctxKeys.ok {
		ctx := peer.NewContext(parent, p)
		ctx = metadata.NewIncomingContext(ctx, md)
		return grpc.NewContextWithServerTransportStream(ctx, ts)
	}
	*c = callContext{Context: parent, peer: p, md: md, ts: ts}
	return c
}

// AfterFunc is context.AfterFunc(c, f), asked of the context under c's
// values when it has the method (the stream's): contexts derived from c,
// and context.AfterFunc, find it on c (context.propagateCancel), where a
// value context would hide it.
func (c *callContext) AfterFunc(f func()) (stop func() bool) {
	if a, ok := c.Context.(interface{ AfterFunc(func()) func() bool }); ok {
		return a.AfterFunc(f)
	}
	return context.AfterFunc(c.Context, f)
}

func (c *callContext) Value(key any) any {
	// Interface comparisons: a key of another type is unequal without its
	// value being compared, so no key can make them panic.
	switch key {
	case ctxKeys.md:
		return c.md
	case ctxKeys.stream:
		return c.ts
	case ctxKeys.peer:
		return c.peer
	}
	return c.Context.Value(key)
}

// ctxKeys are grpc-go's context keys for the peer, the incoming metadata
// and the server transport stream.
var ctxKeys = probeKeys()

type keyProbe struct {
	context.Context
	key any
}

func (p *keyProbe) Value(key any) any {
	p.key = key
	return nil
}

func probeKeys() (k struct {
	peer, md, stream any
	ok               bool
}) {
	p := &keyProbe{Context: context.Background()}
	peer.FromContext(p)
	k.peer, p.key = p.key, nil
	metadata.FromIncomingContext(p)
	k.md, p.key = p.key, nil
	grpc.ServerTransportStreamFromContext(p)
	k.stream = p.key
	comparable := func(v any) bool { return v != nil && reflect.TypeOf(v).Comparable() }
	k.ok = comparable(k.peer) && comparable(k.md) && comparable(k.stream) &&
		k.peer != k.md && k.md != k.stream && k.peer != k.stream
	return k
}
