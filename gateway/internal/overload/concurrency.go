package overload

import (
	"fmt"
	"sync/atomic"
)

// Concurrency bounds the calls and requests in flight across the gateway,
// both fronts together. Past the bound a new one is refused at once rather
// than queued: under twice the load the gateway can serve, the calls it
// takes keep their latency and the rest learn straight away to go
// elsewhere, where an unbounded number in flight would slow every call
// alike (Envoy's overload manager answers its stop_accepting_requests
// action the same way, with a local reply, source/common/http/conn_manager_impl.cc).
type Concurrency struct {
	max      int64
	inFlight atomic.Int64
}

// NewConcurrency bounds calls in flight to max; max <= 0 returns nil: no
// bound, nothing for the fronts to ask.
func NewConcurrency(max int) *Concurrency {
	if max <= 0 {
		return nil
	}
	return &Concurrency{max: int64(max)}
}

// Acquire takes a place for a call, or says why there is none. A taken
// place is given back with Release.
func (c *Concurrency) Acquire() error {
	if c.inFlight.Add(1) > c.max {
		c.inFlight.Add(-1)
		return fmt.Errorf("envgate is overloaded: %d calls in flight reach limits.maxConcurrentCalls; retry with backoff or use another replica", c.max)
	}
	return nil
}

// Release gives back a place Acquire took.
func (c *Concurrency) Release() { c.inFlight.Add(-1) }

// InFlight is how many places are taken.
func (c *Concurrency) InFlight() int64 { return c.inFlight.Load() }
