package dirwatch

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func newWatcher(t *testing.T, dir string) *Watcher {
	t.Helper()
	w, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := w.Add(dir); err != nil {
		t.Fatal(err)
	}
	return w
}

// next is the watcher's next event, or a failure after 10 s.
func next(t *testing.T, w *Watcher) Event {
	t.Helper()
	select {
	case ev := <-w.Events:
		return ev
	case err := <-w.Errors:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("no event in 10 s")
	}
	return Event{}
}

// A log file beside the configuration, written a line at a time and held
// open, is no event: the configuration's change after 1,000 such writes is
// the first event. (With fsnotify's directory watch the first event was
// the log's first write.)
func TestWritesToAFileHeldOpenAreNoEvents(t *testing.T) {
	dir := t.TempDir()
	logf, err := os.OpenFile(filepath.Join(dir, "gateway.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	w := newWatcher(t, dir)
	for i := range 1000 {
		if _, err := fmt.Fprintf(logf, "line %d\n", i); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(conf, []byte("a: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, w); ev.Name != conf {
		t.Fatalf("first event %q, want the configuration's (%q): the log's writes were events", ev.Name, conf)
	}
}

// Each way a configuration file is changed is an event naming it: written
// in place, an editor's rename over it, removed and created, written by a
// process that held it open (at its close), and a ConfigMap volume's
// ..data symlink swapped.
func TestEveryWayAFileChangesIsAnEvent(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(conf, []byte("a: 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w := newWatcher(t, dir)
	// until reads events up to the first naming name: a change may be
	// several (a create then a close, a rename's two halves).
	until := func(what, name string) {
		t.Helper()
		for {
			ev := next(t, w)
			if ev.Name == name {
				return
			}
			if ev.Name == "" {
				t.Fatalf("%s: events lost", what)
			}
		}
	}
	if err := os.WriteFile(conf, []byte("a: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	until("written in place", conf)

	tmp := filepath.Join(dir, ".config.yaml.swp")
	if err := os.WriteFile(tmp, []byte("a: 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, conf); err != nil {
		t.Fatal(err)
	}
	until("renamed over", conf)

	if err := os.Remove(conf); err != nil {
		t.Fatal(err)
	}
	until("removed", conf)
	f, err := os.Create(conf)
	if err != nil {
		t.Fatal(err)
	}
	until("created", conf)
	if _, err := f.WriteString("a: 3\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	until("written and closed", conf)

	ts := filepath.Join(dir, "..2026_12_03_000001")
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	until("..data swapped", filepath.Join(dir, "..data"))
}

// Events the kernel could not queue (a reader that did not keep up) are
// reported as one event with no name: anything may have changed.
func TestLostEventsAreReported(t *testing.T) {
	limit, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Fatal(err)
	}
	var max int
	if _, err := fmt.Sscan(string(limit), &max); err != nil {
		t.Fatal(err)
	}
	if max > 100000 {
		t.Skipf("max_queued_events is %d: too many files to create", max)
	}
	dir := t.TempDir()
	w := newWatcher(t, dir)
	// Nothing reads Events while the files are made: the watcher's
	// goroutine holds one event, the kernel's queue the rest.
	for i := range max + 100 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; ; i++ {
		if ev := next(t, w); ev.Name == "" {
			return
		}
		if i > 3*max {
			t.Fatalf("%d events and none reports the loss", i)
		}
	}
}

// Close ends the watcher's goroutine even while it waits to hand over an
// event nobody reads.
func TestCloseWithAnEventPending(t *testing.T) {
	dir := t.TempDir()
	w, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Add(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
}
