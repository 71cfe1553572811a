package h2front

import (
	"sync"
	"sync/atomic"
	"time"
)

// workers runs requests on goroutines kept between requests, whose stacks
// have grown to what a request needs: a new goroutine per request grows
// its stack on every request (runtime.copystack, 7% of the gateway's CPU
// behind net/http's HTTP/2 server). With no worker waiting, a request
// starts a goroutine, which then stays as a worker until it has had no
// work for idleWorker.
//
// The idle workers are a stack, the most recently idle on top: run takes
// the top one, so the workers a steady load keeps busy are the same few,
// and those at the bottom have waited longest and are the ones the sweep
// ends. A waiting worker receives on its own channel only. (Each waited in
// a select on a shared channel, a stop channel and an idle timer: that
// select, with the timer added to the runtime's heap at every wait and
// taken out at every wake, was 4% of the gateway's CPU under REST over
// h2c.)
type workers struct {
	mu      sync.Mutex // guards idle, stopped and sweep; never held while a request runs
	idle    []*worker  // waiting, in the order they began to wait
	stopped bool
	sweep   *time.Timer // armed while any worker waits
	wg      sync.WaitGroup
	live    atomic.Int32 // workers started and not ended

	// idleFor is how long a worker waits for work before it ends
	// (idleWorker when zero).
	idleFor time.Duration
}

// worker is one waiting goroutine's mailbox.
type worker struct {
	work      chan func() // one request, or nil to end; buffered so the sender never waits
	idleSince time.Time   // under workers.mu
}

const idleWorker = 10 * time.Second

func (w *workers) run(f func()) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		wk := w.idle[n-1]
		w.idle[n-1] = nil
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		wk.work <- f
		return
	}
	w.mu.Unlock()
	wk := &worker{work: make(chan func(), 1)}
	w.live.Add(1)
	w.wg.Go(func() {
		defer w.live.Add(-1)
		f()
		for w.wait(wk) {
			f := <-wk.work
			if f == nil {
				return
			}
			f()
		}
	})
}

// wait puts wk on the idle stack; false when the workers are stopping.
func (w *workers) wait(wk *worker) bool {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return false
	}
	wk.idleSince = now
	w.idle = append(w.idle, wk)
	if w.sweep == nil {
		w.sweep = time.AfterFunc(w.idleTimeout(), w.sweepIdle)
	}
	return true
}

func (w *workers) idleTimeout() time.Duration {
	if w.idleFor > 0 {
		return w.idleFor
	}
	return idleWorker
}

// sweepIdle ends the workers that have waited idleTimeout or longer (the
// bottom of the stack), and runs again when the next would.
func (w *workers) sweepIdle() {
	now := time.Now()
	idle := w.idleTimeout()
	w.mu.Lock()
	n := 0
	for n < len(w.idle) && now.Sub(w.idle[n].idleSince) >= idle {
		n++
	}
	ended := make([]*worker, n)
	copy(ended, w.idle)
	rest := copy(w.idle, w.idle[n:])
	clear(w.idle[rest:])
	w.idle = w.idle[:rest]
	w.sweep = nil
	if len(w.idle) > 0 && !w.stopped {
		w.sweep = time.AfterFunc(w.idle[0].idleSince.Add(idle).Sub(now), w.sweepIdle)
	}
	w.mu.Unlock()
	for _, wk := range ended {
		wk.work <- nil
	}
}

// stopAll ends the idle workers and waits for every worker; no request
// may be running or start.
func (w *workers) stopAll() {
	w.mu.Lock()
	w.stopped = true
	idle := w.idle
	w.idle = nil
	if w.sweep != nil {
		w.sweep.Stop()
		w.sweep = nil
	}
	w.mu.Unlock()
	for _, wk := range idle {
		wk.work <- nil
	}
	w.wg.Wait()
}
