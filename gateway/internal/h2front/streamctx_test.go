package h2front

import (
	"context"
	"testing"
	"time"
)

// TestStreamContextEndsLikeACancelCtx: a stream's own context behaves as
// the context.WithCancel it replaces for handlers: Done closes and Err is
// Canceled at the end, contexts derived from it and context.AfterFunc end
// with it, a stopped AfterFunc does not run, and the relay's hook runs
// once, never after it was taken back.
func TestStreamContextEndsLikeACancelCtx(t *testing.T) {
	var c streamCtx
	if c.Err() != nil {
		t.Fatal("ended before cancel")
	}
	derived, cancelDerived := context.WithTimeout(&c, time.Hour)
	defer cancelDerived()
	ran := make(chan struct{})
	context.AfterFunc(&c, func() { close(ran) })
	stopped := context.AfterFunc(&c, func() { t.Error("a stopped AfterFunc ran") })
	if !stopped() {
		t.Fatal("stop did not stop")
	}
	hooks := 0
	if !c.OnGone(func() { hooks++ }) {
		t.Fatal("setGone refused before the end")
	}
	done := c.Done()
	c.cancel()
	c.cancel() // once
	select {
	case <-done:
	default:
		t.Fatal("Done not closed")
	}
	if c.Err() != context.Canceled || context.Cause(&c) != context.Canceled {
		t.Fatalf("Err %v, Cause %v", c.Err(), context.Cause(&c))
	}
	<-derived.Done()
	if derived.Err() != context.Canceled {
		t.Fatalf("derived: %v", derived.Err())
	}
	<-ran
	if hooks != 1 {
		t.Fatalf("the hook ran %d times", hooks)
	}
	if c.OnGone(func() {}) {
		t.Fatal("setGone took a hook after the end")
	}
	// Done asked for only after the end is closed too.
	var late streamCtx
	late.cancel()
	<-late.Done()

	// A hook taken back does not run.
	var back streamCtx
	back.OnGone(func() { t.Error("a hook taken back ran") })
	back.OnGone(nil)
	back.cancel()
}

// TestStreamContextDeadline: a deadline set on a stream's context (a gRPC
// call's grpc-timeout) behaves as context.WithTimeout's: Deadline reports
// it, the context ends with DeadlineExceeded when it passes (and what
// derives from it or waits on it with it), one not positive ends it at
// once, and an end before it keeps its Canceled, the timer stopped.
func TestStreamContextDeadline(t *testing.T) {
	var c streamCtx
	if _, ok := c.Deadline(); ok {
		t.Fatal("a deadline before one was set")
	}
	start := time.Now()
	c.setTimeout(50 * time.Millisecond)
	d, ok := c.Deadline()
	if !ok || d.Before(start.Add(50*time.Millisecond)) || d.After(time.Now().Add(50*time.Millisecond)) {
		t.Fatalf("Deadline %v %v, want 50ms after %v", d, ok, start)
	}
	derived, cancel := context.WithCancel(&c)
	defer cancel()
	ran := make(chan struct{})
	context.AfterFunc(&c, func() { close(ran) })
	select {
	case <-derived.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the deadline did not end the context")
	}
	if time.Now().Before(d) {
		t.Fatalf("ended %v before its deadline", time.Until(d))
	}
	if c.Err() != context.DeadlineExceeded || derived.Err() != context.DeadlineExceeded {
		t.Fatalf("Err %v, derived %v: want DeadlineExceeded", c.Err(), derived.Err())
	}
	<-ran

	var now streamCtx
	now.setTimeout(0)
	if now.Err() != context.DeadlineExceeded {
		t.Fatalf("a timeout of 0: %v", now.Err())
	}

	var early streamCtx
	early.setTimeout(time.Hour)
	early.cancel()
	if early.Err() != context.Canceled {
		t.Fatalf("ended before its deadline: %v", early.Err())
	}
	if early.timer.Stop() {
		t.Fatal("the deadline's timer still ran after the end")
	}
}

// A registration and its stop cost one allocation (the stop function),
// not a registration object and the list's growth as well: a call makes
// one or two.
func TestStreamContextAfterFuncAllocatesItsStopOnly(t *testing.T) {
	var c streamCtx
	allocs := testing.AllocsPerRun(100, func() {
		stop1 := c.AfterFunc(func() {})
		stop2 := c.AfterFunc(func() {})
		if !stop2() || !stop1() {
			t.Fatal("stop did not stop")
		}
	})
	if allocs > 2 {
		t.Fatalf("%v allocations for two registrations, want 2", allocs)
	}
}
