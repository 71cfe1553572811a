package h2front

import (
	"sync"
	"testing"
	"time"
)

// runAll runs n requests on w at once and returns when all have run.
func runAll(w *workers, n int) {
	var started, done sync.WaitGroup
	started.Add(n)
	done.Add(n)
	release := make(chan struct{})
	for range n {
		w.run(func() {
			started.Done()
			<-release // all n at once: n workers
			done.Done()
		})
	}
	started.Wait()
	close(release)
	done.Wait()
}

// waitFor polls cond (what it watches changes on other goroutines with no
// event to wait on) until it holds or the test's deadline nears.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func idleCount(w *workers) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.idle)
}

// A light steady load is served by the worker that waited least, so the
// workers a burst started end once idle even while requests keep coming.
// With one shared channel (the workers' first design) a waiting worker got
// requests in turn with the others, and none of the burst's ever ended.
func TestWorkersALightLoadKeepsOneWorker(t *testing.T) {
	w := &workers{idleFor: 100 * time.Millisecond}
	defer w.stopAll()
	runAll(w, 4)
	waitFor(t, "4 idle workers", func() bool { return idleCount(w) == 4 })
	if got := w.live.Load(); got != 4 {
		t.Fatalf("%d workers after a burst of 4 requests, want 4", got)
	}
	// One request at a time, every 10 ms (pacing the load, not waiting
	// for anything), for 5 idle timeouts; each after the worker that ran
	// the one before is waiting again.
	done := make(chan struct{}, 1)
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
		w.run(func() { done <- struct{}{} })
		<-done
		waitFor(t, "every worker waiting", func() bool { return idleCount(w) == int(w.live.Load()) })
		time.Sleep(10 * time.Millisecond)
	}
	if got := w.live.Load(); got != 1 {
		t.Fatalf("%d workers after 500 ms of one request at a time, want 1 (the others idle for 100 ms end)", got)
	}
}

// Idle workers end after idleFor, and stopAll ends the rest at once.
func TestWorkersEndWhenIdleAndOnStop(t *testing.T) {
	w := &workers{idleFor: 50 * time.Millisecond}
	runAll(w, 3)
	waitFor(t, "idle workers to end", func() bool { return w.live.Load() == 0 })
	if n := idleCount(w); n != 0 {
		t.Fatalf("%d workers on the idle stack after they ended", n)
	}

	w = &workers{} // the default idle time: 10 s
	runAll(w, 3)
	waitFor(t, "3 idle workers", func() bool { return idleCount(w) == 3 })
	stopped := make(chan struct{})
	go func() { w.stopAll(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("stopAll did not end 3 idle workers within 5 s")
	}
	if got := w.live.Load(); got != 0 {
		t.Fatalf("%d workers after stopAll", got)
	}
}

// BenchmarkWorkersRun is a request handed to a waiting worker and run.
func BenchmarkWorkersRun(b *testing.B) {
	w := &workers{}
	defer w.stopAll()
	done := make(chan struct{}, 1)
	f := func() { done <- struct{}{} }
	b.ReportAllocs()
	for b.Loop() {
		w.run(f)
		<-done
	}
}
