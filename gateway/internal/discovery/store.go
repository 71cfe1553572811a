// Package discovery keeps the endpoints of every service the gateway may send
// to, and tells subscribers when a service's endpoints change. Sources (a
// static file, Kubernetes, DNS) write into a Store; upstream connections read
// from it.
package discovery

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Endpoints is the set of addresses ("host:port") that may take new calls for
// one service, sorted and without duplicates. A Store never mutates a slice it
// has handed out.
type Endpoints []string

// Store holds the current endpoints per endpoint-set key. A missing key means
// the set does not exist; a present key with no endpoints means it exists but
// nothing is ready.
//
// A service's key is its name ("app-service.env1"). Sources that know a
// service's ports as Kubernetes defines them (Service port number and name,
// mapped to the pods' port through the EndpointSlices) publish one set per
// Service port, keyed "<service>:<port number>", and record the ports with
// SetPorts; Resolve maps a destination's port to its set. Sources that give
// addresses with their ports (static, DNS) publish one set under the
// service's name, which serves every destination port.
type Store struct {
	mu    sync.Mutex // guards all below; taken before a subscription's mu
	sets  map[string]Endpoints
	ports map[string]*servicePorts // never mutated once stored
	// labels holds, for sets whose source knows them (Kubernetes), each
	// address's pod labels; subsets maps a set to its subsets' keys and
	// selectors (from DestinationRules: bounded by the configuration).
	labels  map[string]map[string]map[string]string
	subsets map[string]map[string]map[string]string
	subs    map[string]map[*subscription]struct{}
	synced  bool
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
	return &Store{sets: map[string]Endpoints{}, ports: map[string]*servicePorts{}, subs: map[string]map[*subscription]struct{}{},
		labels: map[string]map[string]map[string]string{}, subsets: map[string]map[string]map[string]string{}, syncedCh: make(chan struct{})}
}

// Set replaces the endpoints of service. addrs is copied, sorted and
// de-duplicated.
func (s *Store) Set(service string, addrs []string) {
	s.mu.Lock()
	s.deliverLocked(s.setLocked(service, normalize(addrs), nil))
}

// Delete removes service, and its subsets.
func (s *Store) Delete(service string) {
	s.mu.Lock()
	if _, ok := s.sets[service]; !ok {
		s.mu.Unlock()
		return
	}
	delete(s.sets, service)
	delete(s.labels, service)
	changes := []change{{key: service}}
	for key := range s.subsets[service] {
		if _, ok := s.sets[key]; ok {
			delete(s.sets, key)
			changes = append(changes, change{key: key})
		}
	}
	s.deliverLocked(changes)
}

// change is one set's new state, to deliver.
type change struct {
	key    string
	eps    Endpoints
	exists bool
}

// setLocked stores a set (with its endpoints' labels, nil when the source
// has none) and recomputes its subsets; it returns what changed.
func (s *Store) setLocked(key string, eps Endpoints, labels map[string]map[string]string) []change {
	var changes []change
	if old, ok := s.sets[key]; !ok || !slices.Equal(old, eps) {
		s.sets[key] = eps
		changes = append(changes, change{key, eps, true})
	}
	if labels == nil {
		delete(s.labels, key)
	} else {
		s.labels[key] = labels
	}
	for sub, sel := range s.subsets[key] {
		eps := s.selectLocked(key, sel)
		if old, ok := s.sets[sub]; !ok || !slices.Equal(old, eps) {
			s.sets[sub] = eps
			changes = append(changes, change{sub, eps, true})
		}
	}
	return changes
}

// deliverLocked delivers changes to their subscribers and unlocks s.mu.
// Each subscriber's lock is taken before s.mu is released, so two updates
// reach one subscriber in the order they were stored.
func (s *Store) deliverLocked(changes []change) {
	type delivery struct {
		sub *subscription
		c   change
	}
	var ds []delivery
	for _, c := range changes {
		for sub := range s.subs[c.key] {
			sub.mu.Lock()
			ds = append(ds, delivery{sub, c})
		}
	}
	s.mu.Unlock()
	for _, d := range ds {
		d.sub.fn(d.c.eps, d.c.exists)
		d.sub.mu.Unlock()
	}
}

// Ports are a service's ports as its Kubernetes Service defines them.
type Ports struct {
	// Numbers are the Service port numbers, sorted.
	Numbers []int32
	// Names maps each port's name (if it has one) to its number.
	Names map[string]int32
	// Protocols maps a port number to what names its protocol: the
	// port's appProtocol, else its name (Istio's protocol selection reads
	// both, pkg/config/kube/conversion.go ConvertProtocol).
	Protocols map[int32]string
}

// servicePorts is a service's ports with the set key of each way a
// destination may name one, built once so that resolving a call's port
// costs a map lookup and no allocation.
type servicePorts struct {
	Ports
	keys map[string]string // port number or name -> set key
	only string            // the set key when the Service has one port
}

// ErrNoPort is wrapped by Resolve when the service has no such port.
var ErrNoPort = errors.New("no such port")

// SetPorts records the Service ports of service; its endpoint sets are
// published under PortKey. Set the port sets before the ports, so a Resolve
// never names a set that is not there yet.
func (s *Store) SetPorts(service string, p Ports) {
	sp := &servicePorts{Ports: p, keys: make(map[string]string, 2*len(p.Numbers))}
	for _, n := range p.Numbers {
		sp.keys[strconv.Itoa(int(n))] = PortKey(service, n)
	}
	for name, n := range p.Names {
		sp.keys[name] = PortKey(service, n)
	}
	if len(p.Numbers) == 1 {
		sp.only = PortKey(service, p.Numbers[0])
	}
	s.mu.Lock()
	s.ports[service] = sp
	s.mu.Unlock()
}

// DeletePorts forgets the ports of service.
func (s *Store) DeletePorts(service string) {
	s.mu.Lock()
	delete(s.ports, service)
	s.mu.Unlock()
}

// PortKey is the key of the endpoint set of one Service port.
func PortKey(service string, number int32) string {
	return service + ":" + strconv.Itoa(int(number))
}

// Resolve returns the key of the endpoint set a destination of service on
// port reaches. port is a Service port number or name; "" means the
// destination gave none, and then, as Istio decides
// (pilot/pkg/networking/core/route/route.go GetDestinationCluster), a
// service with one port is reached on it and any other on fallback (the
// listener port, for Istio). A service published without ports is reached
// on its one set whatever the port. The error wraps ErrNoPort and names
// the ports the service has.
func (s *Store) Resolve(service, port, fallback string) (string, error) {
	s.mu.Lock()
	sp, ok := s.ports[service]
	s.mu.Unlock()
	if !ok {
		return service, nil
	}
	if port == "" {
		if sp.only != "" {
			return sp.only, nil
		}
		port = fallback
	}
	if key, ok := sp.keys[port]; ok {
		return key, nil
	}
	return "", fmt.Errorf("%w: %s has no port %q (its ports: %s)", ErrNoPort, service, port, sp.Ports)
}

// Protocol is the protocol name of the Service port whose set is key
// (its appProtocol, else its name), "" when the set is not a Service
// port's or the port names none.
func (s *Store) Protocol(key string) string {
	i := strings.LastIndexByte(key, ':')
	if i < 0 {
		return ""
	}
	n, err := strconv.ParseInt(key[i+1:], 10, 32)
	if err != nil {
		return ""
	}
	s.mu.Lock()
	sp, ok := s.ports[key[:i]]
	s.mu.Unlock()
	if !ok {
		return ""
	}
	return sp.Protocols[int32(n)]
}

// String lists the ports as "50051 (grpc), 8080".
func (p Ports) String() string {
	byNumber := map[int32]string{}
	for name, n := range p.Names {
		byNumber[n] = name
	}
	parts := make([]string, 0, len(p.Numbers))
	for _, n := range p.Numbers {
		if name := byNumber[n]; name != "" {
			parts = append(parts, fmt.Sprintf("%d (%s)", n, name))
		} else {
			parts = append(parts, fmt.Sprint(n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// Exists reports whether service exists: published with ports, or as one
// set.
func (s *Store) Exists(service string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, withPorts := s.ports[service]
	_, asOne := s.sets[service]
	return withPorts || asOne
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
