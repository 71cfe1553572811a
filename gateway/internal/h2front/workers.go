package h2front

import (
	"sync"
	"time"
)

// workers runs requests on goroutines kept between requests, whose stacks
// have grown to what a request needs: a new goroutine per request grows
// its stack on every request (runtime.copystack, 7% of the gateway's CPU
// behind net/http's HTTP/2 server). With no worker waiting, a request
// starts a goroutine, which then stays as a worker until it has waited
// idleWorker for work.
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

func (w *workers) loop() {
	t := time.NewTimer(idleWorker)
	defer t.Stop()
	for {
		select {
		case f := <-w.work:
			f()
			t.Reset(idleWorker)
		case <-t.C:
			return
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
