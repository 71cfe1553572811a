package sniff

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// Mux accepts a listener's connections, sniffs each on its own goroutine
// (bounded in time by Options.Timeout and Options.FirstRequest, and ended
// by Close; in number by the listener's connection cap) and queues it on
// the listener of its server.
type Mux struct {
	lis  net.Listener
	opts Options
	log  *slog.Logger
	subs [4]*queue // by Server

	wg        sync.WaitGroup // the sniffing goroutines, waited for by Run
	closeOnce sync.Once

	// An HTTP/2 connection may wait for its first request as long as it
	// may idle (Options.FirstRequest), so Close ends the waits: it gives
	// every connection still being sniffed a deadline in the past.
	mu       sync.Mutex // guards sniffing and closed
	sniffing map[net.Conn]struct{}
	closed   bool
}

// NewMux sniffs the connections lis accepts.
func NewMux(lis net.Listener, opts Options, log *slog.Logger) *Mux {
	m := &Mux{lis: lis, opts: opts, log: log, sniffing: map[net.Conn]struct{}{}}
	for i := range m.subs {
		m.subs[i] = &queue{addr: lis.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	}
	return m
}

// Listener is what server s accepts from.
func (m *Mux) Listener(s Server) net.Listener { return m.subs[s] }

// Handoff gives c to the HTTP server (a connection the HTTP/1.1 fast path
// does not serve); false when that server no longer accepts.
func (m *Mux) Handoff(c net.Conn) bool { return m.subs[HTTP].put(c) }

// Addr is the listening address.
func (m *Mux) Addr() net.Addr { return m.lis.Addr() }

// Run accepts until Close, then waits for the connections being sniffed.
func (m *Mux) Run() error {
	defer m.wg.Wait()
	for {
		nc, err := m.lis.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		m.wg.Go(func() { m.serve(nc) })
	}
}

func (m *Mux) serve(nc net.Conn) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		_ = nc.Close()
		return
	}
	m.sniffing[nc] = struct{}{}
	m.mu.Unlock()
	c, s, err := Classify(nc, m.opts)
	m.mu.Lock()
	delete(m.sniffing, nc)
	m.mu.Unlock()
	if err != nil {
		if !errors.Is(err, ErrACME) && m.log != nil {
			m.log.Debug("connection closed before its protocol was known", "remote", nc.RemoteAddr().String(), "error", err)
		}
		_ = nc.Close()
		return
	}
	if !m.subs[s].put(c) {
		_ = c.Close()
	}
}

// Close stops accepting and ends the waits of the connections being
// sniffed (as if their time was up); connections already handed over stay
// with their servers.
func (m *Mux) Close() error {
	var err error
	m.closeOnce.Do(func() {
		err = m.lis.Close()
		m.mu.Lock()
		m.closed = true
		for nc := range m.sniffing {
			_ = nc.SetDeadline(aLongTimeAgo)
		}
		m.mu.Unlock()
	})
	return err
}

// queue is a listener fed by the Mux.
type queue struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{} // closed by Close
}

// put hands c to the server, false when its listener is closed.
func (q *queue) put(c net.Conn) bool {
	select {
	case q.conns <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *queue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *queue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *queue) Addr() net.Addr { return q.addr }
