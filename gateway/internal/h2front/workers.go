package h2front

import (
	"sync"
	"time"
)

// workers runs requests on goroutines kept between requests, whose stacks
// have grown to what a request needs: a new goroutine per request grows
// its stack on every request (runtime.copystack, 7% of the gateway's CPU
// behind net/http's HTTP/2 server). With no worker waiting, a request
// starts a goroutine, which then stays as a worker until it has had no
// work for idleWorker (loop).
type workers struct {
	once sync.Once
	work chan func() // unbuffered: a send succeeds only to a waiting worker
	wg   sync.WaitGroup
	stop chan struct{}
	done sync.Once
}

const idleWorker = 10 * time.Second

func (w *workers) init() {
	w.once.Do(func() {
		w.work = make(chan func())
		w.stop = make(chan struct{})
	})
}

func (w *workers) run(f func()) {
	w.init()
	select {
	case w.work <- f:
		return
	default:
	}
	w.wg.Go(func() {
		f()
		w.loop()
	})
}

// loop runs requests until the worker has had none for a whole
// idleWorker (it then waited between one and two of them): the timer is
// set again when it fires, not after each request, where resetting it
// was a timer heap update per request.
func (w *workers) loop() {
	t := time.NewTimer(idleWorker)
	defer t.Stop()
	worked := false // since the timer was set
	for {
		select {
		case f := <-w.work:
			f()
			worked = true
		case <-t.C:
			if !worked {
				return
			}
			worked = false
			t.Reset(idleWorker)
		case <-w.stop:
			return
		}
	}
}

// stopAll ends the idle workers and waits for every worker; no request
// may be running or start.
func (w *workers) stopAll() {
	w.init()
	w.done.Do(func() { close(w.stop) })
	w.wg.Wait()
}
