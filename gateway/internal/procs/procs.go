// Package procs runs the Go scheduler on as many Ps (GOMAXPROCS) as the
// gateway's load needs, up to the runtime's default (the machine's CPUs, or
// the container's CPU limit).
//
// A proxy's goroutines hand work to each other on every request: the
// client connection's goroutine waits for its upstream's answer, an
// upstream connection's reader wakes the streams it read for. With two or
// more Ps, each of those wake-ups may start an idle P's thread, which spins
// looking for work, steals the goroutine, and runs it on another core than
// the one whose cache holds its data. On two cores that cost the gateway
// 12-25% of its CPU per request (docs/bench.md, "Run AE": HTTP/1.1, unary
// gRPC, 1 KiB server streams), while one P served the same load at a
// higher rate. An event-loop proxy (nginx, HAProxy, Envoy) keeps each
// connection on one thread and does not pay it. One P is the cheapest way
// to serve a load that needs less than a core; a busier gateway needs the
// others. So the tuner watches the process's CPU time and the time
// runnable goroutines wait for a P, and adds a P as soon as the ones it
// has are nearly busy or goroutines queue for them, and gives one back only
// after a second in which the rest would have carried the load with room
// to spare.
package procs

import (
	"fmt"
	"runtime"
	"runtime/metrics"
	"sync"
	"time"
)

// The tuner's thresholds.
const (
	// interval is how often the tuner reads the load: a gateway whose
	// load jumps waits at most this long for its next P.
	interval = 100 * time.Millisecond
	// upAt: a P is added when the process used more than this share of
	// its Ps' time over an interval.
	upAt = 0.8
	// downAt and downAfter: a P is given back when the process used less
	// than this share of one P fewer's time for downAfter intervals in a
	// row. Usage on two Ps includes what the scheduler wastes spinning
	// between them (about a fifth on this machine's loads), so the bar
	// sits below upAt by more than that, and a load between the two stays
	// where it is.
	downAt    = 0.7
	downAfter = 10
	// lateWait, lateShare and calmShare: a P is added when more than
	// lateShare of the runtime's sampled scheduling waits in an interval
	// were longer than lateWait (goroutines queued for a P, or for the
	// thread running it, which the kernel may have taken off its core),
	// whatever the CPU use; one is given back only in intervals under
	// calmShare. On one P a stall of its thread stalls every call: with
	// 64 KiB calls over TLS on a shared machine, one P's p99 was twice
	// two Ps' in some runs while its CPU use stayed near 0.4.
	lateWait  = 2 * time.Millisecond
	lateShare = 0.02
	calmShare = 0.005
)

// next is the number of Ps after an interval in which the process used
// `used` CPUs' time while it had p Ps (at most max), and a share late of
// the goroutines that became runnable waited longer than lateWait for one;
// low counts the intervals in a row that were below the bar to give one
// back, and is returned updated.
func next(p, max int, used, late float64, low int) (int, int) {
	if p < max && (used > upAt*float64(p) || late > lateShare) {
		return p + 1, 0
	}
	if p > 1 && used < downAt*float64(p-1) && late < calmShare {
		if low++; low >= downAfter {
			return p - 1, 0
		}
		return p, low
	}
	return p, 0
}

// reading is the process's CPU time and its scheduler's waits at one
// moment.
type reading struct {
	at    time.Time
	cpu   time.Duration // user and system time of every thread
	waits []uint64      // /sched/latencies:seconds bucket counts
}

// tuner keeps GOMAXPROCS at what the load needs.
type tuner struct {
	max  int
	read func() reading
	from int       // the first bucket of reading.waits whose waits are late
	set  func(int) // runtime.GOMAXPROCS

	// The run goroutine's own: the Ps set, the intervals in a row below
	// the bar to give one back, the last reading.
	p, low int
	prev   reading

	stop chan struct{}
	wg   sync.WaitGroup
}

// Start tunes GOMAXPROCS between 1 and the runtime's current setting,
// starting from one P, every interval until the returned stop is called,
// which gives the runtime its default setting back. With one CPU there is
// nothing to tune. The setting is on /metrics as
// go_sched_gomaxprocs_threads.
func Start() (stop func(), err error) {
	max := runtime.GOMAXPROCS(0)
	if max <= 1 {
		return func() {}, nil
	}
	src, err := newRuntimeSource()
	if err != nil {
		return func() {}, fmt.Errorf("procs: not tuning GOMAXPROCS: %w", err)
	}
	t := &tuner{max: max, read: src.read, from: src.from, set: func(n int) { runtime.GOMAXPROCS(n) }, stop: make(chan struct{})}
	t.begin(t.read())
	ticker := time.NewTicker(interval)
	t.wg.Go(func() {
		defer ticker.Stop()
		t.run(ticker.C)
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			close(t.stop)
			t.wg.Wait()
			runtime.SetDefaultGOMAXPROCS()
		})
	}, nil
}

// run retunes at every tick until stop is closed.
func (t *tuner) run(ticks <-chan time.Time) {
	for {
		select {
		case <-t.stop:
			return
		case <-ticks:
		}
		t.step(t.read())
	}
}

// begin sets one P; the load is measured from r on.
func (t *tuner) begin(r reading) {
	t.p, t.low, t.prev = 1, 0, r
	t.set(1)
}

// step retunes from a new reading: the load since the one before.
func (t *tuner) step(cur reading) {
	wall := cur.at.Sub(t.prev.at)
	if wall <= 0 {
		return
	}
	used := float64(cur.cpu-t.prev.cpu) / float64(wall)
	late := lateOf(t.prev.waits, cur.waits, t.from)
	t.prev = cur
	n, low := next(t.p, t.max, used, late, t.low)
	t.low = low
	if n != t.p {
		t.set(n)
		t.p = n
	}
}

// lateOf is the share of the waits counted between two readings of the
// histogram that fell in buckets from index from on.
func lateOf(prev, cur []uint64, from int) float64 {
	var all, late uint64
	for i := range cur {
		d := cur[i]
		if i < len(prev) {
			d -= prev[i]
		}
		all += d
		if i >= from {
			late += d
		}
	}
	if all == 0 {
		return 0
	}
	return float64(late) / float64(all)
}

// runtimeSource reads the process's CPU time (getrusage) and the runtime's
// scheduling latencies.
type runtimeSource struct {
	sample []metrics.Sample
	from   int
}

const schedLatencies = "/sched/latencies:seconds"

func newRuntimeSource() (*runtimeSource, error) {
	if _, err := cpuTime(); err != nil {
		return nil, err
	}
	s := &runtimeSource{sample: []metrics.Sample{{Name: schedLatencies}}}
	metrics.Read(s.sample)
	if h := s.hist(); h != nil {
		s.from = len(h.Counts)
		for i := range h.Counts {
			// Counts[i] holds waits from Buckets[i] to Buckets[i+1].
			if h.Buckets[i] >= lateWait.Seconds() {
				s.from = i
				break
			}
		}
	}
	return s, nil
}

// hist is the latencies histogram the last Read filled, nil if the
// runtime has none.
func (s *runtimeSource) hist() *metrics.Float64Histogram {
	if s.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	return s.sample[0].Value.Float64Histogram()
}

func (s *runtimeSource) read() reading {
	metrics.Read(s.sample)
	cpu, _ := cpuTime() // newRuntimeSource checked that it can be read
	r := reading{at: time.Now(), cpu: cpu}
	if h := s.hist(); h != nil {
		r.waits = append([]uint64(nil), h.Counts...) // Read reuses Counts
	}
	return r
}
