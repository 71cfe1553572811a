package h2client

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// Balancer is how a call picks among the endpoints that take calls.
type Balancer int

const (
	// LeastRequest picks the less busy of two candidates (calls in
	// flight), as Envoy's LEAST_REQUEST does with its default choice count
	// of 2, and as Istio configures when a DestinationRule names no
	// balancer. One candidate is the next in round-robin order, the other
	// random; on a tie the round-robin one wins, so idle endpoints take
	// calls in turn.
	LeastRequest Balancer = iota
	// RoundRobin takes the endpoints in turn.
	RoundRobin
	// Random picks an endpoint at random.
	Random
)

// ParseBalancer reads Istio's names for a DestinationRule's
// loadBalancer.simple.
func ParseBalancer(s string) (Balancer, error) {
	switch strings.ToUpper(s) {
	case "", "LEAST_REQUEST", "LEAST_CONN", "UNSPECIFIED":
		return LeastRequest, nil
	case "ROUND_ROBIN":
		return RoundRobin, nil
	case "RANDOM":
		return Random, nil
	}
	return 0, fmt.Errorf("load balancer %q: want LEAST_REQUEST, ROUND_ROBIN or RANDOM", s)
}

func (b Balancer) String() string {
	switch b {
	case RoundRobin:
		return "ROUND_ROBIN"
	case Random:
		return "RANDOM"
	}
	return "LEAST_REQUEST"
}

// pick chooses an endpoint among eps (not empty).
func (cl *Client) pick(eps []*endpoint) *endpoint {
	n := len(eps)
	if n == 1 {
		return eps[0]
	}
	switch cl.opts.Balancer {
	case Random:
		return eps[rand.IntN(n)]
	case RoundRobin:
		return eps[int(cl.next.Add(1)%uint32(n))]
	}
	a := eps[int(cl.next.Add(1)%uint32(n))]
	if b := eps[rand.IntN(n)]; b.active.Load() < a.active.Load() {
		return b
	}
	return a
}
