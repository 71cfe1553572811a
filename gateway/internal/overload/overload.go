// Package overload is envgate's overload manager, after Envoy's: it watches
// the process's memory against its limit (GOMEMLIMIT, set from the
// container's) and, as memory nears it, first refuses new calls, then
// closes the client connection that holds the most, until memory is back
// under the limit. Without a limit it does nothing.
//
// Envoy's overload manager (source/server/overload_manager_impl.cc) has the
// same two steps as actions on its fixed_heap resource monitor:
// envoy.overload_actions.stop_accepting_requests and
// envoy.overload_actions.reset_high_memory_stream. Here the second acts on
// connections, since gRPC's server does not tell what each stream holds;
// the edge listener does tell what each connection holds.
package overload

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// Holders is what the manager sheds load from: the client connections.
type Holders interface {
	// CloseLargest closes the connection holding the most buffered bytes,
	// if one holds at least min, and reports it.
	CloseLargest(min int64) (held int64, peer string, ok bool)
	// PauseReads stops reading from the connections holding at least min
	// bytes until ResumeReads: while calls are refused, what their
	// clients keep sending waits in the clients.
	PauseReads(min int64)
	ResumeReads()
}

// Options configure a Manager.
type Options struct {
	// Limit is the memory the process must stay under; 0 reads the
	// runtime's soft limit (GOMEMLIMIT), and with none set the manager
	// does nothing.
	Limit int64
	Log   *slog.Logger
	// OnShed, when set, counts the connections closed (metrics).
	OnShed func()
}

// The manager's thresholds, as shares of the limit: new calls are refused
// from RefuseAt until memory falls under ResumeAt; the largest holders
// are closed from ShedAt, or once refusing has lasted ShedAfter (refusing
// alone frees nothing connections already hold, and every client is
// refused meanwhile). A connection holding under shedMin is not closed,
// nor its reads paused while refusing: memory is not any one connection's
// doing. Memory is read every interval.
const (
	RefuseAt  = 0.85
	ResumeAt  = 0.75
	ShedAt    = 0.95
	ShedAfter = time.Second
	interval  = 100 * time.Millisecond
	shedMin   = 1 << 20
)

// Manager decides, from memory readings, whether new calls are taken.
type Manager struct {
	opts    Options
	holders Holders
	// refusing is the state calls read; inUse the last reading.
	refusing atomic.Bool
	inUse    atomic.Int64
	kick     chan struct{} // asks Run for a reading now
	// Run's only.
	samples       []metrics.Sample
	refusingSince time.Time
}

// Kick asks for a reading now rather than at the next interval: the edge
// listener kicks after every few MiB read, so a burst of requests is seen
// while it arrives.
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// New returns a manager shedding from holders (nil: refuse only).
func New(opts Options, holders Holders) *Manager {
	if opts.Limit == 0 {
		if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
			opts.Limit = l
		}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Manager{opts: opts, holders: holders, kick: make(chan struct{}, 1), samples: []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}}
}

// Limit is the memory limit the manager works to; 0 when it is off.
func (m *Manager) Limit() int64 { return m.opts.Limit }

// Admit returns nil while new calls are taken, else why not, for the
// caller to answer RESOURCE_EXHAUSTED with. It is read on every call: one
// atomic load.
func (m *Manager) Admit() error {
	if !m.refusing.Load() {
		return nil
	}
	return fmt.Errorf("envgate is overloaded: memory %d MiB of its %d MiB limit; new calls are refused until it falls, try another replica",
		m.inUse.Load()>>20, m.opts.Limit>>20)
}

// Run reads memory every interval and acts on it until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	if m.opts.Limit <= 0 {
		return nil
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	defer m.resumeReads()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-m.kick:
		}
		m.check()
	}
}

// memory is what the runtime holds from the system, as GOMEMLIMIT counts
// it (everything mapped, less what was returned), less the heap's wholly
// free pages: those are the scavenger's to return, and the limit makes it
// return them before they count against the container.
func (m *Manager) memory() int64 {
	metrics.Read(m.samples)
	return int64(m.samples[0].Value.Uint64() - m.samples[1].Value.Uint64() - m.samples[2].Value.Uint64())
}

func (m *Manager) check() {
	limit := float64(m.opts.Limit)
	use := m.memory()
	m.inUse.Store(use)
	switch r := float64(use) / limit; {
	case r >= RefuseAt && !m.refusing.Load():
		m.refusing.Store(true)
		m.refusingSince = time.Now()
		if m.holders != nil {
			m.holders.PauseReads(shedMin)
		}
		m.opts.Log.Warn("overloaded: refusing new calls, not reading from connections holding 1 MiB or more", "memory_mib", use>>20, "limit_mib", m.opts.Limit>>20)
	case r < ResumeAt && m.refusing.Load():
		m.refusing.Store(false)
		m.resumeReads()
		m.opts.Log.Info("no longer overloaded: taking new calls", "memory_mib", use>>20, "limit_mib", m.opts.Limit>>20)
	}
	stuck := m.refusing.Load() && time.Since(m.refusingSince) >= ShedAfter
	if m.holders == nil || (float64(use) < ShedAt*limit && !stuck) {
		return
	}
	// Enough connections to bring memory back under ResumeAt, by what
	// they hold, largest first (at least one): during a burst, closing one
	// per reading lets the rest arrive meanwhile.
	excess := use - int64(ResumeAt*limit)
	for range maxShedPerReading {
		held, peer, ok := m.holders.CloseLargest(shedMin)
		if !ok {
			break
		}
		m.opts.Log.Warn("overloaded: closed the client connection holding the most memory",
			"peer", peer, "held_mib", held>>20, "memory_mib", use>>20, "limit_mib", m.opts.Limit>>20)
		if m.opts.OnShed != nil {
			m.opts.OnShed()
		}
		if excess -= held; excess <= 0 {
			break
		}
	}
	// What the connections held is garbage once their calls end:
	// collected now, the next reading shows it gone rather than shedding
	// more.
	runtime.GC()
}

func (m *Manager) resumeReads() {
	if m.holders != nil {
		m.holders.ResumeReads()
	}
}

// maxShedPerReading bounds the connections closed on one reading.
const maxShedPerReading = 16
