// Package h2front is envgate's own HTTP/2 server for client connections
// (docs/h2front.md): one goroutine per connection reads frames and keeps
// the stream states of RFC 9113, requests run on workers whose stacks have
// already grown, and whoever has bytes to send writes them: the frames of
// everyone writing at once go out in one system call, so a small response
// is one write instead of net/http's two from two goroutines.
//
// Requests reach an http.Handler, so everything the gateway's HTTP front
// does is unchanged. What it bounds, each as net/http's HTTP/2 server or
// Envoy does: concurrent streams (REFUSED_STREAM past the limit, counting
// a stream until its handler returns), the header list (431), a request
// body per stream to its window and per connection to the connection
// window, the bytes queued to a client that does not read, control frames
// queued for such a client (ENHANCE_YOUR_CALM), streams the client resets
// early (through the connection's StreamEnded, the edge listener's Rapid
// Reset rule), idle connections, and silent ones (PING).
//
// Leaf package: frames, streams and flow control, no routing.
package h2front

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Options configure a Server. Zero values take the defaults named.
type Options struct {
	// MaxConcurrentStreams is SETTINGS_MAX_CONCURRENT_STREAMS (100).
	MaxConcurrentStreams uint32
	// MaxHeaderListSize is SETTINGS_MAX_HEADER_LIST_SIZE: a longer
	// request header list is answered 431 (16 KiB).
	MaxHeaderListSize uint32
	// HeaderTableSize is SETTINGS_HEADER_TABLE_SIZE, the HPACK table the
	// server decodes with (4096).
	HeaderTableSize uint32
	// StreamWindow and ConnWindow are the receive windows: what a client
	// may send on a stream, and on the connection, before the handlers
	// read it (64 KiB and 1 MiB).
	StreamWindow, ConnWindow int32
	// IdleTimeout closes a connection without streams this long (none).
	IdleTimeout time.Duration
	// PingAfter sends a PING on a connection silent this long, and
	// PingTimeout closes it when no answer comes in time (none; 15 s).
	PingAfter, PingTimeout time.Duration
	// MinPingInterval is the least time between a client's PINGs on a
	// connection that sends nothing back: past two strikes the client
	// gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings", as from gRPC's
	// server with its keepalive EnforcementPolicy (none: any rate).
	MinPingInterval time.Duration
	// WriteTimeout bounds one write to the socket (10 s): a client that
	// stops reading loses the connection instead of holding its writers.
	WriteTimeout time.Duration
	// MaxQueued bounds the bytes queued to a client that does not read
	// yet: responses wait past it, and control frames past twice it end
	// the connection (256 KiB).
	MaxQueued int
	// Settings, when set, are the SETTINGS the server sends, exactly (the
	// sniffer sent these already and drops a copy); nil sends the ones the
	// options above say.
	Settings []Setting
	// Relay, when set, is offered each request without a body before
	// the handler: it serves it and returns true, or returns false
	// having sent nothing, and the handler gets it.
	Relay func(*Request) bool
	// GRPC, when set, is offered each well-formed gRPC request (POST,
	// content-type application/grpc...) with its body before the
	// handler, as Relay is: it serves it and returns true, or returns
	// false having read and sent nothing, and the handler gets it.
	GRPC func(*Request) bool
	// Log receives a line per connection ended for a protocol error, at
	// debug level, and handler panics.
	Log *slog.Logger
}

// Setting is one SETTINGS parameter.
type Setting struct {
	ID  uint16
	Val uint32
}

// Defaults.
const (
	defaultMaxStreams   = 100
	defaultHeaderList   = 16 << 10
	defaultTableSize    = 4096
	defaultStreamWindow = 64 << 10
	defaultConnWindow   = 1 << 20
	defaultPingTimeout  = 15 * time.Second
	defaultWriteTimeout = 10 * time.Second
	defaultMaxQueued    = 256 << 10
)

// Server serves HTTP/2 connections with one handler.
type Server struct {
	opts    Options
	handler http.Handler
	workers workers

	mu        sync.Mutex // guards listeners, conns, draining and shutdown; never held with a conn's locks
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	draining  bool
	shutdown  bool
	wg        sync.WaitGroup // the connections being served

	// testHookStreamFinished, set by a test before serving, runs between
	// a response's end and the stream leaving the connection's map.
	testHookStreamFinished func()
}

// New returns a server of h with opts.
func New(h http.Handler, opts Options) *Server {
	if opts.MaxConcurrentStreams == 0 {
		opts.MaxConcurrentStreams = defaultMaxStreams
	}
	if opts.MaxHeaderListSize == 0 {
		opts.MaxHeaderListSize = defaultHeaderList
	}
	if opts.HeaderTableSize == 0 {
		opts.HeaderTableSize = defaultTableSize
	}
	if opts.StreamWindow <= 0 {
		opts.StreamWindow = defaultStreamWindow
	}
	if opts.ConnWindow < initialWindow {
		opts.ConnWindow = max(defaultConnWindow, opts.ConnWindow)
	}
	if opts.PingTimeout <= 0 {
		opts.PingTimeout = defaultPingTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = defaultWriteTimeout
	}
	if opts.MaxQueued <= 0 {
		opts.MaxQueued = defaultMaxQueued
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{opts: opts, handler: h, listeners: map[net.Listener]struct{}{}, conns: map[*conn]struct{}{}}
}

// ErrServerClosed is what Serve returns after Shutdown or Close.
var ErrServerClosed = errors.New("h2front: server closed")

// Serve serves the connections l accepts, each on a goroutine of its own,
// until Shutdown or Close (which close l) or until l fails.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		_ = l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			delete(s.listeners, l)
			closed := s.shutdown
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			return err
		}
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			_ = nc.Close()
			continue
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.ServeConn(nc)
		}()
	}
}

// ServeConn serves one connection until it ends; its first bytes are the
// client's connection preface.
func (s *Server) ServeConn(nc net.Conn) {
	c := newConn(s, nc)
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	c.serve()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Drain asks every client to open no more streams on its connection, as
// Envoy's drain does: a GOAWAY whose last stream is 2^31-1 (RFC 9113
// section 6.8's notice), so streams in flight and those already on their
// way are still served; Shutdown later names the last one. A connection
// opened from now on gets the notice after its SETTINGS.
func (s *Server) Drain() {
	s.mu.Lock()
	s.draining = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.drainNotice()
	}
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// Shutdown tells every connection to take no new streams (GOAWAY) and
// closes each once its streams ended, or all of them when ctx ends; then
// waits for the connections' goroutines.
func (s *Server) Shutdown(ctx context.Context) error {
	for _, c := range s.stop() {
		c.goAway(ErrCodeNo, true)
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.workers.stopAll()
		return nil
	case <-ctx.Done():
	}
	s.Close()
	<-done
	s.workers.stopAll()
	return ctx.Err()
}

// Close ends every connection at once.
func (s *Server) Close() {
	for _, c := range s.stop() {
		c.close(nil)
	}
}

// stop takes no more connections, closes the listeners, and returns the
// connections open now.
func (s *Server) stop() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdown = true
	for l := range s.listeners {
		_ = l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

// tlsState is a connection's TLS state, when TLS was terminated before it
// (the sniffer's connections say so) or it is a *tls.Conn.
func tlsState(nc net.Conn) *tls.ConnectionState {
	switch c := nc.(type) {
	case interface{ TLS() *tls.ConnectionState }:
		return c.TLS()
	case *tls.Conn:
		st := c.ConnectionState()
		return &st
	}
	return nil
}
