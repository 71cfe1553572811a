// Package discovery keeps the endpoints of every service the gateway may send
// to, and tells subscribers when a service's endpoints change. Sources (a
// static file, Kubernetes, DNS) write into a Store; upstream connections read
// from it.
package discovery

import (
	"slices"
	"sync"
)

// Endpoints is the set of addresses ("host:port") that may take new calls for
// one service, sorted and without duplicates. A Store never mutates a slice it
// has handed out.
type Endpoints []string

// Store holds the current endpoints per service key (e.g. "app-service.env1").
// A missing key means the service does not exist; a present key with no
// endpoints means it exists but nothing is ready.
type Store struct {
	mu     sync.Mutex
	sets   map[string]Endpoints
	subs   map[string]map[*subscription]struct{}
	synced bool
	// syncedCh is closed by MarkSynced.
	syncedCh chan struct{}
}

type subscription struct {
	// mu serialises deliveries so a subscriber sees updates in order.
	mu sync.Mutex
	fn func(eps Endpoints, exists bool)
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{sets: map[string]Endpoints{}, subs: map[string]map[*subscription]struct{}{}, syncedCh: make(chan struct{})}
}

// Set replaces the endpoints of service. addrs is copied, sorted and
// de-duplicated.
func (s *Store) Set(service string, addrs []string) {
	eps := normalize(addrs)
	s.mu.Lock()
	if old, ok := s.sets[service]; ok && slices.Equal(old, eps) {
		s.mu.Unlock()
		return
	}
	s.sets[service] = eps
	s.notifyLocked(service, eps, true)
}

// Delete removes service.
func (s *Store) Delete(service string) {
	s.mu.Lock()
	if _, ok := s.sets[service]; !ok {
		s.mu.Unlock()
		return
	}
	delete(s.sets, service)
	s.notifyLocked(service, nil, false)
}

// notifyLocked delivers an update to the service's subscribers and unlocks
// s.mu. Each subscriber's lock is taken before s.mu is released, so two
// updates reach one subscriber in the order they were stored.
func (s *Store) notifyLocked(service string, eps Endpoints, exists bool) {
	subs := make([]*subscription, 0, len(s.subs[service]))
	for sub := range s.subs[service] {
		sub.mu.Lock()
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.fn(eps, exists)
		sub.mu.Unlock()
	}
}

// Get returns the endpoints of service and whether it exists.
func (s *Store) Get(service string) (Endpoints, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	eps, ok := s.sets[service]
	return eps, ok
}

// Subscribe calls fn with the current state of service and then on every
// change, until the returned cancel is called. fn must not call back into the
// Store.
func (s *Store) Subscribe(service string, fn func(eps Endpoints, exists bool)) (cancel func()) {
	sub := &subscription{fn: fn}
	s.mu.Lock()
	if s.subs[service] == nil {
		s.subs[service] = map[*subscription]struct{}{}
	}
	s.subs[service][sub] = struct{}{}
	eps, ok := s.sets[service]
	sub.mu.Lock()
	s.mu.Unlock()
	fn(eps, ok)
	sub.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.subs[service], sub)
		if len(s.subs[service]) == 0 {
			delete(s.subs, service)
		}
		s.mu.Unlock()
	}
}

// MarkSynced records that the sources have delivered their initial state.
func (s *Store) MarkSynced() {
	s.mu.Lock()
	if !s.synced {
		s.synced = true
		close(s.syncedCh)
	}
	s.mu.Unlock()
}

// WaitSynced is closed once MarkSynced was called.
func (s *Store) WaitSynced() <-chan struct{} { return s.syncedCh }

// Synced reports whether MarkSynced was called.
func (s *Store) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

func normalize(addrs []string) Endpoints {
	eps := make(Endpoints, 0, len(addrs))
	for _, a := range addrs {
		if a != "" {
			eps = append(eps, a)
		}
	}
	slices.Sort(eps)
	return slices.Compact(eps)
}
