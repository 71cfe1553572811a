//go:build !linux

package dirwatch

import (
	"sync"

	"github.com/fsnotify/fsnotify"
)

// Watcher is fsnotify's watcher where inotify is not there: every write
// is an event, as fsnotify reports it.
type Watcher struct {
	Events chan Event
	Errors chan error

	fw   *fsnotify.Watcher
	done chan struct{}
	wg   sync.WaitGroup
}

// New starts a watcher with no directories.
func New() (*Watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	w := &Watcher{Events: make(chan Event), Errors: make(chan error), fw: fw, done: make(chan struct{})}
	w.wg.Go(w.relay)
	return w, nil
}

// Add watches the entries of dir.
func (w *Watcher) Add(dir string) error { return w.fw.Add(dir) }

// Close stops the watcher and waits for its goroutine.
func (w *Watcher) Close() error {
	close(w.done)
	err := w.fw.Close()
	w.wg.Wait()
	return err
}

func (w *Watcher) relay() {
	for {
		select {
		case ev, ok := <-w.fw.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			select {
			case w.Events <- Event{Name: ev.Name}:
			case <-w.done:
				return
			}
		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			select {
			case w.Errors <- err:
			case <-w.done:
				return
			}
		case <-w.done:
			return
		}
	}
}
