package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envgate/envgate/gateway/internal/fieldmap"
	"github.com/envgate/envgate/gateway/internal/forwarded"
	"github.com/envgate/envgate/gateway/internal/h1"
	"github.com/envgate/envgate/gateway/internal/route"
)

// lowerASCII is s lower-cased, s itself when it is already.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// H1Server serves HTTP/1.1 client connections on the fast path: the
// request head parsed in place (package h1), routed by the same
// route.Decision as every other request, and relayed on a pooled upstream
// HTTP/1.1 connection by the connection's own goroutine, with no
// http.Request, header map or transport goroutines per request.
//
// It takes the requests that make up almost all HTTP/1.1 traffic (a
// method, an origin-form target, a Host, an optional Content-Length, to an
// HTTP/1.1 upstream) and hands the connection, with what it read of it
// replayed first, to the full HTTP server (net/http, ReverseProxy) for
// anything else: HTTP/1.0, chunked or expect-continue uploads, WebSocket
// and other upgrades, redirect and directResponse routes, HTTP/2
// upstreams, tracing. That server answers those exactly as before.
type H1Server struct {
	p *Proxy
	o H1Options

	mu    sync.Mutex // guards conns and lis
	conns map[*h1Conn]struct{}
	lis   net.Listener

	shutdown atomic.Bool
	draining atomic.Bool    // keep-alives off: each answer closes its connection
	wg       sync.WaitGroup // the connections' goroutines
}

// closing reports whether each answer now closes its connection: the
// server is shutting down or draining.
func (s *H1Server) closing() bool { return s.shutdown.Load() || s.draining.Load() }

// SetKeepAlivesEnabled(false) asks clients to reconnect elsewhere, as
// net/http's method of the name does and Envoy's drain does: each answer
// says "Connection: close" and closes its connection, and idle
// connections are closed now.
func (s *H1Server) SetKeepAlivesEnabled(v bool) {
	s.draining.Store(!v)
	if v {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.state.CompareAndSwap(stateIdle, stateClosed) {
			_ = c.nc.Close()
		}
	}
}

// H1Options configure an H1Server.
type H1Options struct {
	// Handoff gives a connection the fast path does not serve to the full
	// HTTP server; false when that server is gone (the connection is
	// then closed).
	Handoff func(net.Conn) bool
	// IdleTimeout closes a connection with no request this long.
	IdleTimeout time.Duration
	// HeaderTimeout bounds the reading of a request head once it began.
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds a request head: a longer one is answered 431.
	MaxHeaderBytes int
	// TLS is a connection's TLS state, nil for plaintext.
	TLS func(net.Conn) *tls.ConnectionState
}

// NewH1Server returns the fast path's server for p.
func (p *Proxy) NewH1Server(o H1Options) *H1Server {
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 60 << 10
	}
	if o.TLS == nil {
		o.TLS = func(net.Conn) *tls.ConnectionState { return nil }
	}
	return &H1Server{p: p, o: o, conns: map[*h1Conn]struct{}{}}
}

// Serve serves the connections l accepts until l is closed.
func (s *H1Server) Serve(l net.Listener) error {
	s.mu.Lock()
	s.lis = l
	s.mu.Unlock()
	if s.shutdown.Load() {
		// Shut down before it served: Shutdown may not have seen l.
		_ = l.Close()
		return http.ErrServerClosed
	}
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.shutdown.Load() || errors.Is(err, net.ErrClosed) {
				return http.ErrServerClosed
			}
			return err
		}
		s.wg.Go(func() { s.serveConn(nc) })
	}
}

// Shutdown stops accepting, closes idle connections and lets each active
// one finish its request (answered with "Connection: close"), until ctx
// ends; then it closes what is left.
func (s *H1Server) Shutdown(ctx context.Context) error {
	s.shutdown.Store(true)
	s.mu.Lock()
	if s.lis != nil {
		_ = s.lis.Close()
	}
	for c := range s.conns {
		if c.state.CompareAndSwap(stateIdle, stateClosed) {
			_ = c.nc.Close()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// Close closes the listener and every connection at once.
func (s *H1Server) Close() {
	s.shutdown.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lis != nil {
		_ = s.lis.Close()
	}
	for c := range s.conns {
		c.state.Store(stateClosed)
		_ = c.nc.Close()
	}
}

// A connection's state, for Shutdown.
const (
	stateActive int32 = iota // reading or serving a request
	stateIdle                // waiting for a request
	stateClosed              // closed by Shutdown
)

// h1Conn is one client connection on the fast path.
type h1Conn struct {
	nc    net.Conn
	src   watchedReader // what br reads: nc, after a byte the watch read
	br    *bufio.Reader
	state atomic.Int32
	tls   *tls.ConnectionState
	ip    string // the client's address without its port
	peer  string

	req     h1.Request
	resp    h1.Response
	headers map[string][]string // the routing view of req, reused
	vals    []string            // backing of headers' values
	scratch []byte              // a request head longer than br's buffer
	rq      request
	ex      exchange
	// valuesFn is c.values, bound once.
	valuesFn func(name string) []string

	// watch notices a client that leaves while its request waits for
	// the upstream (see watchClient).
	watchDone  chan struct{}
	gone       atomic.Bool
	watching   bool        // a watch was set for this request
	watchTimer *time.Timer // ticks while requests come; starts the watch (tick)
	watchState atomic.Int32
	watchSeq   atomic.Uint32 // waits begun on this connection
	watchArmed atomic.Bool   // watchTimer is set, or its tick runs
	tickSeq    uint32        // watchSeq at the last tick; tick's alone
	watchUp    *upConn       // the request's upstream connection, closed if the client leaves
	// readDeadline is the one set on nc (zero: none).
	readDeadline time.Time
	// consumer, when the listener tracks what its connections hold, is
	// told after each request that everything read was consumed.
	consumer consumer
}

// consumer is what the edge listener's connection address takes
// (edge.Addr): that every byte read so far was consumed but pending, so
// the overload manager does not count a long-lived connection's history
// as memory it holds.
type consumer interface{ Consumed(pending int) }

// setReadDeadline sets the connection's read deadline, and remembers it.
func (c *h1Conn) setReadDeadline(t time.Time) {
	c.readDeadline = t
	_ = c.nc.SetReadDeadline(t)
}

// values are the request's values of the field name, any case.
func (c *h1Conn) values(name string) []string {
	if v, ok := c.headers[name]; ok {
		return v
	}
	return c.headers[lowerASCII(name)]
}

// watchedReader is the connection as br reads it: the byte the client
// watch read, if any, then the connection.
type watchedReader struct {
	nc      net.Conn
	pending int // -1 for none, else the byte
}

func (r *watchedReader) Read(p []byte) (int, error) {
	if r.pending >= 0 && len(p) > 0 {
		p[0] = byte(r.pending)
		r.pending = -1
		return 1, nil
	}
	return r.nc.Read(p)
}

// clientBufSize is the client connection's read buffer: request heads
// larger than it are gathered in a scratch buffer, up to MaxHeaderBytes.
const clientBufSize = 4 << 10

var clientWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, maxReplayBytes); return &b }}

func (s *H1Server) serveConn(nc net.Conn) {
	c := &h1Conn{nc: nc, tls: s.o.TLS(nc), headers: map[string][]string{}, watchDone: make(chan struct{}, 1)}
	c.src = watchedReader{nc: nc, pending: -1}
	c.valuesFn = c.values
	c.peer = nc.RemoteAddr().String()
	c.consumer, _ = nc.RemoteAddr().(consumer)
	c.ip = c.peer
	if host, _, err := net.SplitHostPort(c.peer); err == nil {
		c.ip = host
	}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		c.endWatch()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	if s.p.o.Tracer != nil || s.p.o.Propagator != nil {
		// Spans are made by the full server's path.
		s.handoff(c, nil)
		return
	}
	c.br = bufio.NewReaderSize(&c.src, clientBufSize)
	for served := false; ; served = true {
		c.state.Store(stateIdle)
		// Draining, a new connection still gets its request served.
		if s.shutdown.Load() || s.draining.Load() && served || c.state.Load() == stateClosed {
			_ = nc.Close()
			return
		}
		if s.o.IdleTimeout > 0 {
			// The idle deadline moves at most once a second: a
			// deadline is a timer to reset, and a second is nothing
			// to an idle timeout. The last answer's end is now
			// enough, when the fast path read the clock for it.
			now := c.rq.end
			if now.IsZero() {
				now = time.Now()
			}
			if d := c.readDeadline.Sub(now); d < s.o.IdleTimeout-min(s.o.IdleTimeout/10, time.Second) || d > s.o.IdleTimeout {
				c.setReadDeadline(now.Add(s.o.IdleTimeout))
			}
		}
		_, err := c.br.Peek(1)
		if !c.state.CompareAndSwap(stateIdle, stateActive) {
			return // closed by Shutdown
		}
		if err != nil {
			_ = nc.Close()
			return
		}
		if b, _ := c.br.Peek(c.br.Buffered()); s.o.HeaderTimeout > 0 {
			if n, _ := h1.HeadEnd(b); n == 0 {
				c.setReadDeadline(time.Now().Add(s.o.HeaderTimeout))
			}
		}
		head, copied, crlf, err := h1.ReadHead(c.br, s.o.MaxHeaderBytes, &c.scratch)
		switch {
		case errors.Is(err, h1.ErrHeadTooLarge):
			s.localReplyClose(c, http.StatusRequestHeaderFieldsTooLarge, "envgate: the request head is longer than limits.maxRequestHeadersBytes")
			return
		case err != nil:
			_ = nc.Close()
			return
		}
		var pre []byte
		if copied {
			pre = head
		}
		if !crlf || !h1.ParseRequest(head, &c.req) {
			s.handoff(c, pre)
			return
		}
		discard := 0
		if !copied {
			discard = len(head)
		}
		switch s.p.serveFast(s, c, discard) {
		case fastHandOff:
			s.handoff(c, pre)
			return
		case fastClose:
			_ = nc.Close()
			return
		}
		if cap(c.scratch) > clientBufSize {
			c.scratch = nil
		}
		if c.consumer != nil {
			c.consumer.Consumed(c.br.Buffered())
		}
	}
}

// handoff gives c to the full HTTP server, what was read of it first: pre
// (a head already taken from br), then br's buffer.
func (s *H1Server) handoff(c *h1Conn, pre []byte) {
	var pending []byte
	pending = append(pending, pre...)
	if c.br != nil {
		b, _ := c.br.Peek(c.br.Buffered())
		pending = append(pending, b...)
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	if !s.o.Handoff(&replayConn{Conn: c.nc, pending: pending}) {
		_ = c.nc.Close()
	}
}

// localReplyClose answers and closes a connection the fast path cannot
// read a request from.
func (s *H1Server) localReplyClose(c *h1Conn, code int, msg string) {
	w := clientWriters.Get().(*bufio.Writer)
	w.Reset(c.nc)
	writeLocalReply(w, code, msg, true)
	_ = w.Flush()
	w.Reset(nil)
	clientWriters.Put(w)
	_ = c.nc.Close()
}

// replayConn is a connection whose first bytes were already read: they
// are read again first.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// TLS is the TLS state of the connection under, if it says one.
func (c *replayConn) TLS() *tls.ConnectionState {
	if t, ok := c.Conn.(interface{ TLS() *tls.ConnectionState }); ok {
		return t.TLS()
	}
	return nil
}

// NetConn is the connection under.
func (c *replayConn) NetConn() net.Conn { return c.Conn }

type fastResult int

const (
	fastKeep    fastResult = iota // serve the connection's next request
	fastClose                     // close the connection
	fastHandOff                   // give the connection to the full server
)

// serveFast serves c.req, or says to hand it off before anything of it is
// consumed (the head is still in c.br, discard bytes of it).
func (p *Proxy) serveFast(s *H1Server, c *h1Conn, discard int) fastResult {
	req := &c.req
	clear(c.headers)
	c.vals = c.vals[:0]
	for _, f := range req.Fields {
		c.vals = fieldmap.Add(c.headers, c.vals, f.Name, f.Value)
	}
	rreq := route.Request{Headers: c.headers, Path: req.Target, Authority: req.Host, Method: req.Method}
	dec, decErr, ep, epErr, full := p.decideSimple(&rreq)
	if full {
		return fastHandOff
	}
	_, _ = c.br.Discard(discard)

	rq := &c.rq
	*rq = request{id: forwarded.RequestID(), start: time.Now(), dec: dec, ep: ep}
	ex := &c.ex
	*ex = exchange{proto: "HTTP/1.1", method: req.Method, path: req.Target, authority: req.Host,
		userAgent: req.Get("user-agent"), peer: c.peer, values: c.valuesFn}
	var code int
	var in, out int64
	if p.o.Observer != nil {
		p.o.Observer.RequestStarted()
	}
	keep := !req.Close
	w := clientWriters.Get().(*bufio.Writer)
	w.Reset(c.nc)
	// The request is accounted for (log, metrics) before the last of its
	// answer is sent, as the full server does when its handler returns:
	// a client that has its answer finds it counted.
	finished := false
	defer func() {
		w.Reset(nil)
		clientWriters.Put(w)
		if !finished {
			p.finish(context.Background(), rq, ex, code, in, out)
		}
	}()

	reply := func(status int, msg string) fastResult {
		code = status
		close := !keep || s.closing()
		out = int64(writeLocalReply(w, status, msg, close))
		finished = true
		p.finish(context.Background(), rq, ex, code, in, out)
		if w.Flush() != nil || close {
			return fastClose
		}
		return fastKeep
	}
	if l := p.o.Limiter; l != nil {
		if err := l.Acquire(); err != nil {
			rq.flags = "OM"
			keep = keep && req.ContentLength == 0
			return reply(http.StatusServiceUnavailable, err.Error())
		}
		defer l.Release()
	}
	if status, flags, msg := refusal(dec, decErr, epErr); status != 0 {
		keep = keep && req.ContentLength == 0 // the body is not read
		rq.flags = flags
		return reply(status, msg)
	}
	a := dec.Action()
	if a.Rewrite != nil && a.Rewrite.URI != "" {
		rq.prefix = matchedPrefix(dec.Rule, &rreq)
	}
	if req.ContentLength > 0 {
		// A body may take as long as the client needs, as with the
		// full server.
		c.setReadDeadline(time.Time{})
	}
	var body []byte
	rq.canRetry = a.Retries.Attempts > 0 && req.ContentLength <= maxReplayBytes
	if rq.canRetry && req.ContentLength > 0 {
		bp := bodyBuffers.Get().(*[]byte)
		defer bodyBuffers.Put(bp)
		body = (*bp)[:req.ContentLength]
		n, err := io.ReadFull(c.br, body)
		in = int64(n)
		if err != nil {
			keep = false
			return reply(http.StatusBadRequest, "envgate: reading the request body: "+err.Error())
		}
		rq.body = body
	}
	var deadline time.Time
	if a.Timeout > 0 {
		deadline = rq.start.Add(a.Timeout)
	}
	rq.xff = c.ip
	if prior := c.headers["x-forwarded-for"]; len(prior) > 0 {
		rq.xff = forwarded.For(prior, c.ip)
	}

	var u *upConn
	err := p.retry(rq, deadline, c.gone.Load, func() tryResult {
		var err error
		var perTry bool
		u, err, perTry = p.fastTry(c, rq, deadline, a.Retries.PerTryTimeout, &in)
		if u == nil {
			return tryResult{err: err, perTry: perTry}
		}
		return tryResult{code: c.resp.Status, grpc: grpcStatusOf(&c.resp)}
	}, func() {
		p.discardBody(u, &c.resp, req.Method)
		u = nil
	})
	if u == nil {
		keep = keep && (req.ContentLength == 0 || rq.body != nil)
		status, msg := upstreamFailure(rq, err, deadlinePassed(deadline), c.gone.Load())
		if status == 0 {
			return fastClose // the client left
		}
		return reply(status, msg)
	}
	code = c.resp.Status
	closeAfter := !keep || s.closing()
	p.writeResponseHead(w, c, rq, closeAfter)
	n, reusable, err := p.relayBody(w, c, u)
	out = n
	if !deadline.IsZero() && reusable {
		_ = u.nc.SetDeadline(time.Time{})
	}
	// One reading of the clock for the pool, the log, the metrics and
	// the next idle deadline (serveConn).
	rq.end = time.Now()
	if err != nil || !reusable {
		_ = u.nc.Close()
	} else {
		p.pool.put(u, rq.end)
	}
	if err != nil {
		if errors.Is(err, errClientWrite) {
			rq.flags = "DC"
		}
		return fastClose
	}
	finished = true
	p.finish(context.Background(), rq, ex, code, in, out)
	if w.Flush() != nil {
		return fastClose
	}
	if closeAfter {
		return fastClose
	}
	return fastKeep
}

// decideSimple routes a request for the HTTP/1.1 fast path or the HTTP/2
// relay: the decision and its endpoint, each with its error, or full for
// what only the full path serves (direct responses, redirects, HTTP/2
// upstreams).
func (p *Proxy) decideSimple(rreq *route.Request) (dec route.Decision, decErr error, ep Endpoint, epErr error, full bool) {
	dec, decErr = p.routes().Decide(rreq, p.pick())
	if decErr != nil {
		return dec, decErr, ep, nil, false
	}
	a := dec.Action()
	if a.DirectResponse != nil || a.Redirect != nil {
		return dec, nil, ep, nil, true
	}
	ep, epErr = p.ups.Endpoint(dec.Destination)
	if epErr != nil && dec.Fallback(p.o.Fallback) {
		ep, epErr = p.ups.Endpoint(dec.Destination)
	}
	return dec, nil, ep, epErr, epErr == nil && ep.Protocol != HTTP1
}

// refusal is the answer to a request that has no route or no endpoint,
// as Envoy answers it (404 NR, 503 NC, 503 UH "no healthy upstream"), or
// status 0 when it has both.
func refusal(dec route.Decision, decErr, epErr error) (status int, flags, msg string) {
	if decErr != nil {
		// Only here: errors.As's target escapes, an allocation per
		// request on the path that has a route.
		var ref *route.Refusal
		if errors.As(decErr, &ref) && ref.NoRoute {
			return http.StatusNotFound, "NR", ref.Message
		}
		return http.StatusServiceUnavailable, "NC", decErr.Error()
	}
	if epErr != nil {
		return http.StatusServiceUnavailable, "UH", "no healthy upstream: " + epErr.Error() + " (" + dec.Rule.Source + " to " + dec.Destination.String() + ")"
	}
	return 0, "", ""
}

// retryAnswer runs try as the route's retry policy says (p.retry): try
// returns the connection whose answer head is in ans, or the failure. A
// retried answer's small body is read so its connection serves again,
// unless cut (the client left).
func (p *Proxy) retryAnswer(rq *request, deadline time.Time, gone func() bool, cut *cutter, ans *answer, method string, try func() (*upConn, error, bool)) (*upConn, error) {
	var u *upConn
	err := p.retry(rq, deadline, gone, func() tryResult {
		var err error
		var perTry bool
		u, err, perTry = try()
		if u == nil {
			return tryResult{err: err, perTry: perTry}
		}
		return tryResult{code: ans.head.Status, grpc: grpcStatusOf(&ans.head)}
	}, func() {
		if cut.release() {
			p.discardBody(u, &ans.head, method)
		} else {
			_ = u.nc.Close()
		}
		u = nil
	})
	return u, err
}

func deadlinePassed(d time.Time) bool { return !d.IsZero() && !time.Now().Before(d) }

// fastTry sends the request on a connection to rq.ep and reads the
// response's head into c.resp (see tryOn).
func (p *Proxy) fastTry(c *h1Conn, rq *request, deadline time.Time, perTry time.Duration, in *int64) (*upConn, error, bool) {
	return p.tryOn(context.Background(), rq, deadline, perTry, c.gone.Load, func(u *upConn) (bool, error) {
		replayable, err := p.writeRequest(u, c, rq, in)
		if err == nil {
			err = p.readResponseHead(u, c)
		}
		return replayable, err
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// writeRequest sends the request head (with Envoy's edge headers and the
// route's rewrite and header operations) and its body.
func (p *Proxy) writeRequest(u *upConn, c *h1Conn, rq *request, in *int64) (replayable bool, err error) {
	req := &c.req
	a := rq.dec.Action()
	ops := a.RequestHeaders
	w := u.bw
	writeRequestLine(w, rq, req.Method, req.Target, req.Host)
	for _, f := range req.Fields {
		if dropRequestField(f.Name) || !ops.Empty() && touches(ops, f.Name) {
			continue
		}
		writeField(w, f.Name, f.Value)
	}
	proto := "http"
	if c.tls != nil {
		proto = "https"
	}
	writeEdgeFields(w, ops, rq, c.ip, proto)
	writeOps(w, ops)
	if req.HasLength {
		_, _ = w.WriteString("content-length: ")
		_, _ = w.WriteString(strconv.FormatInt(req.ContentLength, 10))
		_, _ = w.WriteString("\r\n")
	}
	_, _ = w.WriteString("\r\n")
	switch {
	case rq.body != nil:
		_, _ = w.Write(rq.body)
	case req.ContentLength > 0:
		// Streamed: written once, not replayable.
		n, err := io.CopyN(writerOnlyW{w}, c.br, req.ContentLength)
		*in += n
		if err != nil {
			return false, &clientBodyError{err}
		}
		return false, u.flushForAnswer()
	}
	return true, u.flushForAnswer()
}

// clientBodyError is a request body the client did not finish sending.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error { return e.err }

// writerOnlyW hides bufio.Writer's ReadFrom: a copy then goes through the
// writer's buffer and the caller's, not a buffer ReadFrom allocates.
type writerOnlyW struct{ io.Writer }

// readResponseHead reads the response head into c.resp, skipping 1xx
// interim answers, while watching for the client leaving.
func (p *Proxy) readResponseHead(u *upConn, c *h1Conn) error {
	c.watchClient(u)
	defer c.stopWatch()
	return readAnswerHead(u.br, p.maxResponseHead(), &c.resp)
}

// errProtocol marks an upstream answer that breaks HTTP/1.1 before its
// head ends: Envoy's codec resets the stream with ProtocolError, and its
// router answers 502 with the flag UPE (router.cc Filter::onUpstreamReset,
// streamResetReasonToResponseFlag), not the 503 of other resets.
var errProtocol = errors.New("protocol error")

// readAnswerHead reads an upstream's response head into resp, skipping 1xx
// interim answers (103 Early Hints is not forwarded); a head longer than
// limit, one that is not HTTP/1.1 and 101 to a request that asked for no
// upgrade are protocol errors.
func readAnswerHead(br *bufio.Reader, limit int, resp *h1.Response) error {
	var scratch []byte
	for {
		head, copied, crlf, err := h1.ReadHead(br, limit, &scratch)
		if err != nil {
			if errors.Is(err, h1.ErrHeadTooLarge) {
				return fmt.Errorf("%w: the response head is longer than limits.maxRequestHeadersBytes", errProtocol)
			}
			if err == io.EOF && br.Buffered() == 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if !crlf {
			return fmt.Errorf("%w: %w", errProtocol, h1.ErrMalformed)
		}
		if err := h1.ParseResponse(head, resp); err != nil {
			return fmt.Errorf("%w: %w", errProtocol, err)
		}
		if !copied {
			_, _ = br.Discard(len(head))
		}
		switch s := resp.Status; {
		case s == http.StatusSwitchingProtocols:
			return fmt.Errorf("%w: 101 Switching Protocols to a request that asked for no upgrade", errProtocol)
		case s < 200:
			continue
		}
		return nil
	}
}

func (p *Proxy) maxResponseHead() int {
	if p.o.MaxResponseHeaderBytes > 0 {
		return p.o.MaxResponseHeaderBytes
	}
	return 60 << 10
}

// watchDelay is how long a request waits for its response before the
// connection is watched for the client leaving, at least, and at most
// twice: most answers come sooner, and watching costs a goroutine.
const watchDelay = 50 * time.Millisecond

// watchClient notices, while the upstream has not answered, a client that
// closes its connection (Envoy's downstream disconnect, DC): the upstream
// connection is then closed, which ends the wait. stopWatch ends the
// watch. A byte the client sends meanwhile (a pipelined request) is kept
// for the next read.
//
// The connection's timer ticks every watchDelay while requests come, and
// a tick that finds the same request waiting as the tick before starts
// the watch. A request costs a few atomic operations on its connection
// then, not a timer's reset and stop, which take the timer heap's lock
// and are most of the watch's cost when a timer is set per request.
func (c *h1Conn) watchClient(u *upConn) {
	if c.br.Buffered() > 0 {
		return // a pipelined request is already here
	}
	c.watchUp = u
	c.watchState.Store(watchWaiting)
	c.watchSeq.Add(1)
	c.watching = true
	if !c.watchArmed.Load() && c.watchArmed.CompareAndSwap(false, true) {
		if c.watchTimer == nil {
			// Made unset, then set: a tick must find the field written.
			c.watchTimer = time.AfterFunc(math.MaxInt64, c.tick)
		}
		c.watchTimer.Reset(watchDelay)
	}
}

// The client watch's states.
const (
	watchOff     int32 = iota // no request waits, or it was called off
	watchWaiting              // a request waits for its answer
	watchReading              // reading the client
	watchClosed               // the connection ended: ticks stop
)

// tick is the watch timer's: it starts the watch for a request that has
// waited since the last tick, and sets the timer again while requests
// come; on an idle connection it stops (watchClient sets it again).
// Ticks do not overlap: the timer is set again only at a tick's end, or
// by watchClient once a tick cleared watchArmed as its last step.
func (c *h1Conn) tick() {
	seq := c.watchSeq.Load()
	if seq == c.tickSeq && c.watchState.CompareAndSwap(watchWaiting, watchReading) {
		c.watch()
	}
	busy := seq != c.tickSeq || c.watchState.Load() == watchWaiting
	c.tickSeq = seq
	if busy && c.watchState.Load() != watchClosed {
		c.watchTimer.Reset(watchDelay)
		return
	}
	c.watchArmed.Store(false)
	// A request that began as this tick looked is not left unwatched.
	if c.watchSeq.Load() != seq && c.watchState.Load() != watchClosed && c.watchArmed.CompareAndSwap(false, true) {
		c.watchTimer.Reset(watchDelay)
	}
}

// endWatch stops the ticks of a connection that ended.
func (c *h1Conn) endWatch() {
	c.watchState.Store(watchClosed)
	if c.watchTimer != nil {
		c.watchTimer.Stop()
	}
}

// watch reads the client while the upstream has not answered.
func (c *h1Conn) watch() {
	var b [1]byte
	n, err := c.nc.Read(b[:])
	if n == 1 {
		c.src.pending = int(b[0])
	} else if err != nil && !isTimeout(err) {
		c.gone.Store(true)
		_ = c.watchUp.nc.Close()
	}
	c.watchDone <- struct{}{}
}

// stopWatch ends the client watch, waiting for its read if it began.
func (c *h1Conn) stopWatch() {
	if !c.watching {
		return
	}
	c.watching = false
	if c.watchState.CompareAndSwap(watchWaiting, watchOff) {
		return
	}
	_ = c.nc.SetReadDeadline(aLongTimeAgo)
	<-c.watchDone
	c.watchState.Store(watchOff)
	c.setReadDeadline(time.Time{})
}

var aLongTimeAgo = time.Unix(1, 0)

// writeResponseHead writes the status line and fields of c.resp to the
// client: hop-by-hop fields dropped (RFC 9110 section 7.6.1, as
// ReverseProxy drops them), the route's response header operations, and
// envgate's own fields; the body's framing is set for the client.
func (p *Proxy) writeResponseHead(w *bufio.Writer, c *h1Conn, rq *request, closeAfter bool) {
	r := &c.resp
	ops := rq.dec.Action().ResponseHeaders
	_, _ = w.WriteString("HTTP/1.1 ")
	_, _ = w.WriteString(strconv.Itoa(r.Status))
	_ = w.WriteByte(' ')
	reason := r.Reason
	if reason == "" {
		reason = http.StatusText(r.Status)
	}
	_, _ = w.WriteString(reason)
	_, _ = w.WriteString("\r\n")
	for _, f := range r.Fields {
		if dropResponseField(f.Name, r.Conn, r.Chunked) || !ops.Empty() && touches(ops, f.Name) {
			continue
		}
		writeField(w, f.Name, f.Value)
	}
	writeOps(w, ops)
	served := rq.dec.Env
	if rq.dec.Baseline != "" {
		served = rq.dec.Baseline
		writeField(w, BaselineHeader, rq.dec.Baseline)
	}
	if p.o.DebugHeader {
		writeField(w, UpstreamHeader, served+" "+rq.ep.Addr)
	}
	switch {
	case r.ContentLength >= 0:
		_, _ = w.WriteString("Content-Length: ")
		_, _ = w.WriteString(strconv.FormatInt(r.ContentLength, 10))
		_, _ = w.WriteString("\r\n")
	case !noBody(c.req.Method, r.Status):
		_, _ = w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if closeAfter {
		_, _ = w.WriteString("Connection: close\r\n")
	}
	_, _ = w.WriteString("\r\n")
}

// noBody reports whether a response has no body whatever its fields say
// (RFC 9112 section 6.3).
func noBody(method string, status int) bool {
	return method == http.MethodHead || status == http.StatusNoContent || status == http.StatusNotModified || status < 200
}

// errClientWrite marks a failure to write to the client (it left).
var errClientWrite = errors.New("writing to the client")

// relayBody copies the response body from u to w, the last of it left in
// w for the caller to flush; reusable says u may serve another request.
func (p *Proxy) relayBody(w *bufio.Writer, c *h1Conn, u *upConn) (n int64, reusable bool, err error) {
	r := &c.resp
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	switch {
	case noBody(c.req.Method, r.Status):
		return 0, !r.Close, nil
	case r.ContentLength >= 0:
		if int64(u.br.Buffered()) >= r.ContentLength {
			// The whole body is buffered: one write with the head.
			b, _ := u.br.Peek(int(r.ContentLength))
			m, _ := w.Write(b)
			_, _ = u.br.Discard(m)
			return int64(m), !r.Close, nil
		}
		n, err = io.CopyBuffer(&clientErrWriter{w: w}, io.LimitReader(u.br, r.ContentLength), *bp)
		if err == nil && n < r.ContentLength {
			err = io.ErrUnexpectedEOF
		}
		return n, !r.Close, err
	case r.Chunked:
		n, err = h1.CopyChunked(w, u.br, *bp)
		if err != nil && w.Flush() != nil {
			err = errClientWrite
		}
		return n, !r.Close, err
	default:
		// Delimited by the upstream closing: chunked to the client.
		n, err = h1.WriteChunked(w, u.br, *bp)
		return n, false, err
	}
}

// clientErrWriter marks write errors as the client's.
type clientErrWriter struct{ w *bufio.Writer }

func (c *clientErrWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	if err != nil {
		return n, errClientWrite
	}
	return n, nil
}

// discardBody reads the small, sized body of a response not forwarded (a
// retried try) so that its connection serves again; any other is closed.
func (p *Proxy) discardBody(u *upConn, r *h1.Response, method string) {
	switch {
	case noBody(method, r.Status) && !r.Close:
		p.pool.put(u, time.Now())
	case r.ContentLength >= 0 && r.ContentLength <= 4<<10 && !r.Close:
		if _, err := io.CopyN(io.Discard, u.br, r.ContentLength); err == nil {
			p.pool.put(u, time.Now())
			return
		}
		_ = u.nc.Close()
	default:
		_ = u.nc.Close()
	}
}

// grpcStatusOf is a trailers-only gRPC answer's status ("" if none).
func grpcStatusOf(r *h1.Response) string {
	for _, f := range r.Fields {
		if h1.EqualFold(f.Name, "grpc-status") {
			return f.Value
		}
	}
	return ""
}

// writeField writes one header field.
func writeField(w *bufio.Writer, name, value string) {
	if len(name)+len(value)+4 <= w.Available() {
		// One append into the buffer, not four calls to copy the parts.
		b := w.AvailableBuffer()
		b = append(append(append(append(b, name...), ": "...), value...), "\r\n"...)
		_, _ = w.Write(b)
		return
	}
	_, _ = w.WriteString(name)
	_, _ = w.WriteString(": ")
	_, _ = w.WriteString(value)
	_, _ = w.WriteString("\r\n")
}

// touches reports whether ops remove or replace the field name.
func touches(ops route.HeaderOps, name string) bool {
	for _, k := range ops.Remove {
		if h1.EqualFold(k, name) {
			return true
		}
	}
	for k := range ops.Set {
		if h1.EqualFold(k, name) {
			return true
		}
	}
	return false
}

// writeRequestLine writes the request line, with the route's rewrite of
// the path (Envoy's prefix_rewrite) and authority, and the Host field.
func writeRequestLine(w *bufio.Writer, rq *request, method, target, host string) {
	if rw := rq.dec.Action().Rewrite; rw != nil {
		if rw.URI != "" {
			if t := rewritePath(target, rq.prefix, rw.URI); len(t) > 0 && t[0] == '/' {
				target = t
			}
		}
		if rw.Authority != "" {
			host = rw.Authority
		}
	}
	_, _ = w.WriteString(method)
	_ = w.WriteByte(' ')
	_, _ = w.WriteString(target)
	_, _ = w.WriteString(" HTTP/1.1\r\nhost: ")
	_, _ = w.WriteString(host)
	_, _ = w.WriteString("\r\n")
}

// writeEdgeFields writes the fields the gateway sets at the edge, as
// Envoy's connection manager does (conn_manager_utility.cc
// mutateRequestHeaders), but those the route's operations remove or
// replace.
func writeEdgeFields(w *bufio.Writer, ops route.HeaderOps, rq *request, ip, proto string) {
	for _, f := range [...]h1.Field{{Name: "x-forwarded-for", Value: rq.xff}, {Name: "x-envoy-external-address", Value: ip},
		{Name: "x-forwarded-proto", Value: proto}, {Name: "x-request-id", Value: rq.id}} {
		if ops.Empty() || !touches(ops, f.Name) {
			writeField(w, f.Name, f.Value)
		}
	}
}

// writeOps writes the set and add operations' fields (the fields they
// replace were skipped).
func writeOps(w *bufio.Writer, ops route.HeaderOps) {
	for k, v := range ops.Set {
		writeField(w, k, v)
	}
	for k, v := range ops.Add {
		writeField(w, k, v)
	}
}

// dropRequestField: what the upstream does not get from the client's head
// (host and content-length are written apart): hop-by-hop fields as
// ReverseProxy removes them, the client's x-envoy-* (Envoy's
// cleanInternalHeaders) and the fields the gateway sets.
func dropRequestField(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
		"content-length", "x-forwarded-for", "x-forwarded-proto", "x-request-id":
		return true
	}
	return len(name) >= 8 && name[:8] == "x-envoy-"
}

// dropResponseField: hop-by-hop fields, those the Connection field named,
// and the framing the gateway writes itself.
func dropResponseField(name string, conn []string, chunked bool) bool {
	for _, h := range [...]string{"keep-alive", "proxy-connection", "proxy-authenticate", "te", "upgrade"} {
		if h1.EqualFold(name, h) {
			return true
		}
	}
	if !chunked && h1.EqualFold(name, "trailer") {
		return true
	}
	for _, h := range conn {
		if h1.EqualFold(name, h) {
			return true
		}
	}
	return false
}

// writeLocalReply writes one of the gateway's own answers; it returns the
// body's length.
func writeLocalReply(w *bufio.Writer, code int, msg string, closeAfter bool) int {
	body := msg + "\n"
	_, _ = w.WriteString("HTTP/1.1 ")
	_, _ = w.WriteString(strconv.Itoa(code))
	_ = w.WriteByte(' ')
	_, _ = w.WriteString(http.StatusText(code))
	_, _ = w.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ")
	_, _ = w.WriteString(strconv.Itoa(len(body)))
	if closeAfter {
		_, _ = w.WriteString("\r\nConnection: close")
	}
	_, _ = w.WriteString("\r\n\r\n")
	_, _ = w.WriteString(body)
	return len(body)
}
