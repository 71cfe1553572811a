package upstream

import (
	"sync"

	"google.golang.org/grpc/resolver"
)

// endpointResolver is the resolver of one connection, so each connection gets
// its endpoints pushed from discovery without a global registry. gRPC builds
// it when the connection leaves idle and closes it when the connection goes
// idle or closes; updates in between are kept and handed over at the next
// Build.
type endpointResolver struct {
	mu    sync.Mutex
	cc    resolver.ClientConn // nil while not built
	state resolver.State
}

func (r *endpointResolver) Scheme() string { return "envgate" }

func (r *endpointResolver) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cc = cc
	_ = cc.UpdateState(r.state) // an empty set is reported at call time as no healthy upstream
	return r, nil
}

func (r *endpointResolver) update(addrs []string) {
	st := resolver.State{Addresses: make([]resolver.Address, len(addrs))}
	for i, a := range addrs {
		st.Addresses[i] = resolver.Address{Addr: a}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state = st
	if r.cc != nil {
		_ = r.cc.UpdateState(st)
	}
}

func (r *endpointResolver) ResolveNow(resolver.ResolveNowOptions) {}

func (r *endpointResolver) Close() {
	r.mu.Lock()
	r.cc = nil
	r.mu.Unlock()
}
