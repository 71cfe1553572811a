// Package gctune keeps the garbage collector from running too often when the
// live heap is small.
//
// A proxy's live heap is tiny (1-2 MB forwarding 100-byte calls) while it
// allocates some 14 KB per call, all garbage by the call's end. With Go's
// defaults the heap goal is then its 4 MB minimum and the collector runs
// every few hundred calls. Raising GOGC would fix that but also multiply the
// heap of a proxy carrying large messages (7 MB live at 64 KiB). So the goal
// is kept at max(floor, 2 x live): GOGC=100 above the floor, fewer
// collections below it.
package gctune

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// minHeap is the Go runtime's heap minimum at GOGC=100; it scales with GOGC.
const minHeap = 4 << 20

// Start keeps the heap goal at max(floor, 2 x the live heap) until the
// returned stop is called (which leaves GOGC as it was before Start). It
// retunes after every collection.
func Start(floor uint64) (stop func()) {
	t := &tuner{floor: floor, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.prev = debug.SetGCPercent(Percent(floor, 0))
	t.arm()
	return func() {
		if t.stopped.CompareAndSwap(false, true) {
			debug.SetGCPercent(t.prev)
		}
	}
}

type tuner struct {
	floor   uint64
	prev    int
	stopped atomic.Bool
	sample  []metrics.Sample // only touched by the runtime's cleanup goroutine
}

// sentinel is a heap object whose cleanup runs after the next collection.
// It holds a pointer so that it is never a tiny allocation sharing a block
// with others, which could keep it alive.
type sentinel struct{ _ *int }

func (t *tuner) arm() {
	runtime.AddCleanup(new(sentinel), (*tuner).collected, t)
}

func (t *tuner) collected() {
	if t.stopped.Load() {
		return
	}
	metrics.Read(t.sample)
	debug.SetGCPercent(Percent(t.floor, t.sample[0].Value.Uint64()))
	t.arm()
}

// Percent is the GOGC that makes the heap goal max(floor, 2 x live): the
// runtime's goal is max(minHeap x GOGC/100, live x (1 + GOGC/100)).
func Percent(floor, live uint64) int {
	if 2*live >= floor {
		return 100
	}
	limit := floor * 100 / minHeap // GOGC whose heap minimum is the floor
	if live == 0 {
		return int(max(limit, 100))
	}
	return int(max(min(floor*100/live-100, limit), 100))
}
