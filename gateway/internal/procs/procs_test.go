package procs

import (
	"runtime"
	"slices"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	for _, tc := range []struct {
		name          string
		p, max        int
		used, late    float64
		low           int
		wantP, wantLo int
	}{
		{"one P nearly busy: a second", 1, 2, 0.85, 0, 0, 2, 0},
		{"one P half busy: stays", 1, 2, 0.5, 0, 0, 1, 0},
		{"goroutines queue for the P: a second", 1, 2, 0.3, 0.2, 0, 2, 0},
		{"a few late waits: stays", 1, 2, 0.3, 0.02, 0, 1, 0},
		{"at the ceiling: stays", 2, 2, 1.9, 0.5, 0, 2, 0},
		{"two of four busy: a third", 2, 4, 1.7, 0, 0, 3, 0},
		{"never below one P", 1, 2, 0, 0, 9, 1, 0},
		{"an idle interval on two: counted", 2, 2, 0.2, 0, 3, 2, 4},
		{"the tenth idle interval: one given back", 2, 2, 0.2, 0, downAfter - 1, 1, 0},
		{"two Ps in the band: stay, count reset", 2, 2, 0.75, 0, 5, 2, 0},
		{"idle but late: stays, count reset", 2, 2, 0.2, 0.1, 5, 2, 0},
		{"idle, a few late waits: stays, count reset", 2, 2, 0.2, 0.01, 5, 2, 0},
		{"three Ps under two's bar: counted", 3, 4, 1.3, 0, 0, 3, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, low := next(tc.p, tc.max, tc.used, tc.late, tc.low)
			if p != tc.wantP || low != tc.wantLo {
				t.Fatalf("next(%d, %d, %.2f, %.2f, %d) = %d, %d; want %d, %d", tc.p, tc.max, tc.used, tc.late, tc.low, p, low, tc.wantP, tc.wantLo)
			}
		})
	}
}

func TestLateOf(t *testing.T) {
	prev := []uint64{10, 10, 10, 10}
	cur := []uint64{100, 60, 15, 35} // 90 + 50 + 5 + 25 new waits
	if got, want := lateOf(prev, cur, 2), 30.0/170; got != want {
		t.Fatalf("lateOf = %v, want %v", got, want)
	}
	if got := lateOf(cur, cur, 2); got != 0 {
		t.Fatalf("lateOf with no new waits = %v, want 0", got)
	}
}

// TestStepFollowsTheLoad drives the tuner with readings a second apart:
// the Ps follow the CPU used, and a lull gives them back only after
// downAfter intervals.
func TestStepFollowsTheLoad(t *testing.T) {
	var set []int
	tu := &tuner{max: 2, from: 1, set: func(n int) { set = append(set, n) }}
	at := time.Unix(1000, 0)
	var cpu time.Duration
	waits := []uint64{0, 0}
	r := func(cores float64, lateWaits uint64) reading {
		at = at.Add(time.Second)
		cpu += time.Duration(cores * float64(time.Second))
		waits = []uint64{waits[0] + 100, waits[1] + lateWaits}
		return reading{at: at, cpu: cpu, waits: waits}
	}
	tu.begin(r(0, 0))
	tu.step(r(0.5, 0)) // half a core: one P
	tu.step(r(0.95, 0))
	if got := tu.p; got != 2 {
		t.Fatalf("after a busy second on one P: %d Ps, want 2 (set %v)", got, set)
	}
	for i := range downAfter - 1 {
		tu.step(r(0.3, 0))
		if tu.p != 2 {
			t.Fatalf("idle interval %d gave a P back before %d", i+1, downAfter)
		}
	}
	tu.step(r(0.3, 0))
	if tu.p != 1 {
		t.Fatalf("after %d idle intervals: %d Ps, want 1", downAfter, tu.p)
	}
	tu.step(r(0.2, 50)) // a third of the waits late
	if tu.p != 2 {
		t.Fatalf("with goroutines queued for the P: %d Ps, want 2", tu.p)
	}
	tu.step(reading{at: at, cpu: cpu, waits: waits}) // no time passed
	if want := []int{1, 2, 1, 2}; !slices.Equal(set, want) {
		t.Fatalf("GOMAXPROCS set to %v, want %v", set, want)
	}
}

// TestStartOnTheRuntime runs the tuner on this process: one P at the
// start, a second once two goroutines keep the one busy, and the
// runtime's default back at stop.
func TestStartOnTheRuntime(t *testing.T) {
	def := runtime.GOMAXPROCS(0)
	if def < 2 {
		t.Skipf("GOMAXPROCS is %d: nothing to tune", def)
	}
	stop, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("GOMAXPROCS after Start = %d, want 1", got)
	}
	// Keep the one P busy (this goroutine and a second one) until the
	// tuner adds the next, for at most 20 intervals' worth of ticks.
	done := make(chan struct{})
	spun := make(chan struct{})
	go func() {
		defer close(spun)
		var x uint64
		for {
			select {
			case <-done:
				return
			default:
				x = spin(x)
			}
		}
	}()
	deadline := time.Now().Add(20 * interval)
	var x uint64
	for runtime.GOMAXPROCS(0) == 1 && time.Now().Before(deadline) {
		x = spin(x)
	}
	close(done)
	<-spun
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Fatalf("GOMAXPROCS with one P kept busy for %v = %d, want 2", 20*interval, got)
	}
	stop()
	if got := runtime.GOMAXPROCS(0); got != def {
		t.Fatalf("GOMAXPROCS after stop = %d, want the default %d", got, def)
	}
}

// spin burns about a tenth of a millisecond of CPU.
func spin(x uint64) uint64 {
	for i := range 100_000 {
		x = x*31 + uint64(i)
	}
	return x
}
