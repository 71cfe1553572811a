package h2front

import (
	"context"
	"slices"
	"sync"
	"time"
)

// streamCtx is a stream's context: done when the client resets the
// stream, the connection ends, the stream is over, or the deadline its
// handler set passes (setTimeout: a gRPC call's grpc-timeout). It lives in the
// stream, so a request costs no context allocation and no registration in
// a connection-wide context, whose lock every stream of the connection
// would take twice (context.WithCancelCause and its cancel: 5% of the CPU
// of a relayed REST request). It carries no values; context.Cause of it
// is its Err.
type streamCtx struct {
	// mu guards the fields below; no other lock of the package is held
	// while it is taken. The relay's hook runs under it (and may take
	// locks of its own), so that once setGone(nil) returns the hook is
	// neither running nor to run.
	mu   sync.Mutex
	done chan struct{}
	err  error
	// afters are the AfterFunc registrations: a call makes one or two
	// (its upstream stream's watch, a timeout of the route's), so they
	// start in afterBuf, and each is known by its number, which its stop
	// function holds: one allocation a registration, that function.
	afters   []afterFunc
	afterBuf [2]afterFunc
	lastID   uint64
	// gone is the relay's hook (Request.OnGone), run at the end.
	gone func()
	// deadline, when set, ends the context with DeadlineExceeded through
	// timer; an end before it stops the timer.
	deadline time.Time
	timer    *time.Timer
}

// afterFunc is one AfterFunc registration.
type afterFunc struct {
	id uint64
	f  func()
}

// closedChan is the Done of a context ended before anyone asked.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

var _ context.Context = (*streamCtx)(nil)

func (c *streamCtx) Deadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadline, !c.deadline.IsZero()
}

// setTimeout ends the context with context.DeadlineExceeded once d has
// passed (at once if d is not positive, as context.WithTimeout does). It
// is set once, by the handler, before the context is passed on.
func (c *streamCtx) setTimeout(d time.Duration) {
	if d <= 0 {
		c.end(context.DeadlineExceeded)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || !c.deadline.IsZero() {
		return
	}
	c.deadline = time.Now().Add(d)
	c.timer = time.AfterFunc(d, c.expire)
}

func (c *streamCtx) expire() { c.end(context.DeadlineExceeded) }

func (c *streamCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		if c.err != nil {
			return closedChan
		}
		c.done = make(chan struct{})
	}
	return c.done
}

func (c *streamCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *streamCtx) Value(any) any { return nil }

// AfterFunc runs f in its own goroutine once the context ends, unless
// stop is called first (context.AfterFunc, and contexts derived from this
// one, use it instead of a goroutine each).
func (c *streamCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	if c.afters == nil {
		c.afters = c.afterBuf[:0]
	}
	c.lastID++
	id := c.lastID
	c.afters = append(c.afters, afterFunc{id: id, f: f})
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.IndexFunc(c.afters, func(a afterFunc) bool { return a.id == id })
		if i < 0 {
			return false
		}
		c.afters = slices.Delete(c.afters, i, i+1)
		return true
	}
}

// OnGone sets the hook run at the end (nil: none, and a hook set before
// is neither running nor to run when it returns); false if the context
// ended already, when it is not set. One user at a time: the relay, or
// the handler's upstream exchange (httpproxy's serveDirect). It costs no
// allocation, where context.AfterFunc costs several.
func (c *streamCtx) OnGone(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil && f != nil {
		return false
	}
	c.gone = f
	return true
}

// cancel ends the context: the stream is over or gone.
func (c *streamCtx) cancel() { c.end(context.Canceled) }

// end ends the context once with err: Done closes, the AfterFuncs start,
// the relay's hook runs.
func (c *streamCtx) end(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.done != nil {
		close(c.done)
	}
	if c.gone != nil {
		c.gone()
		c.gone = nil
	}
	afters := c.afters
	c.afters = nil
	c.mu.Unlock()
	for _, a := range afters {
		go a.f()
	}
}
