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
