package route

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Decision is where one request goes and how: the one answer both fronts
// (gRPC and HTTP) get from the table, so they cannot route differently.
type Decision struct {
	// Rule is the rule that matched; its Action says how (timeout,
	// retries, header operations, rewrite, redirect, direct response).
	Rule *Rule
	// Destination is the one picked by weight, or the baseline's after
	// Fallback.
	Destination Destination
	// Env is the environment the rule routed to (the picked destination's
	// namespace, before any fallback).
	Env string
	// Baseline is the environment that took the request because Env has
	// no such service ("" when none did).
	Baseline string
}

// Action is the matched rule's action.
func (d *Decision) Action() *Action { return &d.Rule.Action }

// Fallback sends the request to fallback's destination when it names one
// (the baseline of sandbox routing, for a destination with no service),
// and reports whether it did.
func (d *Decision) Fallback(fallback func(Destination) (Destination, bool)) bool {
	if fallback == nil {
		return false
	}
	fb, ok := fallback(d.Destination)
	if !ok {
		return false
	}
	d.Destination, d.Baseline = fb, fb.Namespace
	return true
}

// Refusal is a request the table routes nowhere, and why.
type Refusal struct {
	// NoRoute is set when no rule matched (Envoy's NR: 404, gRPC
	// UNIMPLEMENTED); otherwise a rule matched but has nowhere to send
	// (Envoy's UH/NC: 503, gRPC UNAVAILABLE).
	NoRoute bool
	Message string
}

func (r *Refusal) Error() string { return r.Message }

// Decide routes r: the first matching rule, and a destination of its
// action picked with pick (a number in [0, 1)). A request the table
// refuses gets a *Refusal. Only a refusal allocates.
func (t *Table) Decide(r *Request, pick float64) (Decision, error) {
	rule, ok := t.Route(r)
	if !ok {
		h := t.envHeader
		return Decision{}, &Refusal{NoRoute: true, Message: "envgate: " + (&NoRouteError{Header: h, Values: r.Headers[h], Path: r.Path}).Error()}
	}
	if rule.Action.Redirect != nil || rule.Action.DirectResponse != nil {
		return Decision{Rule: rule}, nil // answered by the gateway itself
	}
	dest, ok := rule.Action.Pick(pick)
	if !ok {
		return Decision{}, &Refusal{Message: fmt.Sprintf("no healthy upstream (route %s has no destination with a weight)", rule.Source)}
	}
	if dest.NoService != "" {
		// Istio leaves such a host as written, Envoy finds no cluster for
		// it and answers 503 (NC).
		return Decision{}, &Refusal{Message: fmt.Sprintf("envgate: route %s sends to %q, which names no service (Istio expands only short names; write %s.svc.cluster.local)",
			rule.Source, dest.NoService, dest.NoService)}
	}
	return Decision{Rule: rule, Destination: dest, Env: dest.Namespace}, nil
}

// RetryBackoff is how long to wait before retry n (0 for the first), as
// Envoy's router does by default (JitteredExponentialBackOffStrategy with
// a 25 ms base and a 250 ms maximum): uniform below 25 ms x 2^n, capped.
func RetryBackoff(n int) time.Duration {
	const base, max = 25 * time.Millisecond, 250 * time.Millisecond
	ceil := base << min(n, 8)
	if ceil > max {
		ceil = max
	}
	return time.Duration(rand.Int64N(int64(ceil)))
}
