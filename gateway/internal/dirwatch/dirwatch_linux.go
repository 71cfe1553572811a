//go:build linux

package dirwatch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mask is what a watch reports: an entry written and closed, created,
// renamed in or out, removed; the directory itself removed or moved. Not
// IN_MODIFY (each write) nor IN_ATTRIB (a mode or time change, which is no
// reload).
const mask = unix.IN_CLOSE_WRITE | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_DELETE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// Watcher watches directories with one inotify instance. Its goroutine
// sends on Events and Errors until Close, which waits for it.
type Watcher struct {
	Events chan Event
	Errors chan error

	f    *os.File // the inotify descriptor, non-blocking: reads park in the runtime's poller
	done chan struct{}
	wg   sync.WaitGroup

	// mu guards dirs, which the reading goroutine consults to name
	// events; no other lock is taken under it.
	mu   sync.Mutex
	dirs map[int32]string // watch descriptor -> directory
}

// New starts a watcher with no directories.
func New() (*Watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &Watcher{
		Events: make(chan Event),
		Errors: make(chan error),
		f:      os.NewFile(uintptr(fd), "inotify"),
		done:   make(chan struct{}),
		dirs:   map[int32]string{},
	}
	w.wg.Go(w.read)
	return w, nil
}

// Add watches the entries of dir.
func (w *Watcher) Add(dir string) error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	var wd int
	var addErr error
	if err := rc.Control(func(fd uintptr) { wd, addErr = unix.InotifyAddWatch(int(fd), dir, mask) }); err != nil {
		return err
	}
	if addErr != nil {
		return fmt.Errorf("watch %s: %w", dir, addErr)
	}
	w.mu.Lock()
	w.dirs[int32(wd)] = filepath.Clean(dir)
	w.mu.Unlock()
	return nil
}

// Close stops the watcher and waits for its goroutine; Events and Errors
// then receive nothing more.
func (w *Watcher) Close() error {
	close(w.done)
	err := w.f.Close() // ends the goroutine's read
	w.wg.Wait()
	return err
}

func (w *Watcher) read() {
	// Room for several events with names up to NAME_MAX (255), as inotify(7)
	// advises; a read returns whole events only.
	var buf [8 * (unix.SizeofInotifyEvent + unix.NAME_MAX + 1)]byte
	for {
		n, err := w.f.Read(buf[:])
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			select {
			case w.Errors <- fmt.Errorf("inotify read: %w", err):
			case <-w.done:
			}
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameLen := int(ev.Len)
			name := ""
			if nameLen > 0 && off+unix.SizeofInotifyEvent+nameLen <= n {
				raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+nameLen]
				name = string(raw[:clen(raw)]) // NUL-padded
			}
			off += unix.SizeofInotifyEvent + nameLen
			if !w.send(w.event(ev, name)) {
				return
			}
		}
	}
}

// event names what ev changed: the entry, the directory itself, or
// nothing (lost events).
func (w *Watcher) event(ev *unix.InotifyEvent, name string) Event {
	if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
		return Event{}
	}
	w.mu.Lock()
	dir := w.dirs[ev.Wd]
	if ev.Mask&unix.IN_IGNORED != 0 {
		delete(w.dirs, ev.Wd) // the watch is gone with its directory
	}
	w.mu.Unlock()
	if name == "" {
		return Event{Name: dir}
	}
	return Event{Name: filepath.Join(dir, name)}
}

func (w *Watcher) send(e Event) bool {
	select {
	case w.Events <- e:
		return true
	case <-w.done:
		return false
	}
}

func clen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}
