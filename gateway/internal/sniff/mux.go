package sniff

import (
	"errors"
	"log/slog"
	"net"
	"sync"
)

// Mux accepts a listener's connections, sniffs each on its own goroutine
// (bounded in time by Options.Timeout, in number by the listener's
// connection cap) and queues it on the listener of its server.
type Mux struct {
	lis  net.Listener
	opts Options
	log  *slog.Logger
	subs [3]*queue // by Server

	wg        sync.WaitGroup // the sniffing goroutines, waited for by Run
	closeOnce sync.Once
}

// NewMux sniffs the connections lis accepts.
func NewMux(lis net.Listener, opts Options, log *slog.Logger) *Mux {
	m := &Mux{lis: lis, opts: opts, log: log}
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
	c, s, err := Classify(nc, m.opts)
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

// Close stops accepting; connections already handed over stay with their
// servers.
func (m *Mux) Close() error {
	var err error
	m.closeOnce.Do(func() { err = m.lis.Close() })
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
