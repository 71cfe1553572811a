package gctune

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		floor, live uint64
		want        int
	}{
		{16 * mb, 0, 400},       // the heap minimum is the floor
		{16 * mb, 1 * mb, 400},  // 5 x 1 MB < 16 MB: the minimum rules
		{16 * mb, 4 * mb, 300},  // 4 MB x 4 = 16 MB
		{16 * mb, 7 * mb, 128},  // 7 MB x 2.28 = 16 MB
		{16 * mb, 8 * mb, 100},  // 2 x live reaches the floor
		{16 * mb, 64 * mb, 100}, // large heaps: Go's default
		{2 * mb, 0, 100},        // a floor under Go's own minimum changes nothing
	} {
		if got := Percent(c.floor, c.live); got != c.want {
			t.Errorf("Percent(%d MB, %d MB) = %d, want %d", c.floor/mb, c.live/mb, got, c.want)
		}
		// The runtime's goal with that GOGC is the one asked for.
		p := uint64(Percent(c.floor, c.live))
		goal := max(minHeap*p/100, c.live*(100+p)/100)
		want := max(c.floor, 2*c.live, minHeap)
		if d := int64(goal) - int64(want); d < -mb/8 || d > mb/8 {
			t.Errorf("floor %d MB, live %d MB: goal %d, want %d", c.floor/mb, c.live/mb, goal, want)
		}
	}
}

func gogc() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// waitGOGC collects until the tuner, which runs after each collection, has
// set the wanted GOGC.
func waitGOGC(t *testing.T, want func(uint64) bool) uint64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !want(gogc()) {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC stayed %d", gogc())
		}
		runtime.GC()
		runtime.Gosched()
	}
	return gogc()
}

// The tuner follows the live heap after each collection and restores GOGC
// on stop.
func TestStartFollowsLiveHeap(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	stop := Start(64 << 20)
	defer stop()
	// A test binary's live heap is a few MB: far under half the floor.
	waitGOGC(t, func(p uint64) bool { return p > 400 })

	big := make([]byte, 64<<20) // live, and over half the floor
	for i := range big {
		big[i] = 1
	}
	waitGOGC(t, func(p uint64) bool { return p == 100 })
	runtime.KeepAlive(big)

	stop()
	debug.SetGCPercent(73)
	runtime.GC()
	runtime.GC()
	if p := gogc(); p != 73 {
		t.Fatalf("after stop the tuner still changed GOGC to %d", p)
	}
}
