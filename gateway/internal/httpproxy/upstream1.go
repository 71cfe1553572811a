package httpproxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/envgate/envgate/gateway/internal/forwarded"
	"github.com/envgate/envgate/gateway/internal/h1"
)

// direct reports whether the full path sends r to ep on the fast path's
// pooled HTTP/1.1 connections (serveDirect) rather than through
// ReverseProxy and net/http's Transport, whose two goroutines per
// connection and per-request hand-offs cost REST over HTTP/2 about a
// third of its CPU. ReverseProxy keeps what it is needed for: upgrades,
// Expect: 100-continue, HTTP/2 upstreams, and tracing.
func (p *Proxy) direct(r *http.Request, ep Endpoint) bool {
	return ep.Protocol == HTTP1 && p.o.Tracer == nil && p.o.Propagator == nil &&
		!isUpgrade(r) && r.Header.Get("Expect") == ""
}

// serveDirect relays r to rq.ep on a pooled upstream HTTP/1.1 connection,
// retried as the route says, and answers w as Envoy would (the same flags
// and texts as upstreamError).
func (p *Proxy) serveDirect(w http.ResponseWriter, r *http.Request, rq *request) {
	a := rq.dec.Action()
	var deadline time.Time
	if a.Timeout > 0 {
		deadline = rq.start.Add(a.Timeout)
	}
	ip := r.RemoteAddr
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	rq.xff = ip
	if prior := r.Header.Values("X-Forwarded-For"); len(prior) > 0 {
		rq.xff = forwarded.For(prior, ip)
	}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	// The client leaving ends the wait for the answer and its relay: one
	// watch for the whole request, whichever connection it is on.
	var cut cutter
	defer cut.watch(r.Context(), cut.cut).end()
	gone := func() bool { return r.Context().Err() != nil }
	ans := answers.Get().(*answer)
	defer ans.release()
	u, err := p.retryAnswer(rq, deadline, gone, &cut, ans, r.Method, func() (*upConn, error, bool) {
		return p.directTry(r, rq, deadline, a.Retries.PerTryTimeout, ip, proto, &cut, ans)
	})
	if u == nil {
		if code, msg := upstreamFailure(rq, err, deadlinePassed(deadline), gone()); code != 0 {
			localReply(w, code, msg)
		}
		return
	}
	reusable := p.relayDirect(w, r, rq, u, ans)
	if !cut.release() || !reusable {
		_ = u.nc.Close()
		return
	}
	if !deadline.IsZero() {
		_ = u.nc.SetDeadline(time.Time{})
	}
	p.pool.put(u, time.Now())
}

// directTry sends r on a connection to rq.ep and reads the response's
// head into ans (see tryOn); cut is the connection the client leaving
// cuts.
func (p *Proxy) directTry(r *http.Request, rq *request, deadline time.Time, perTry time.Duration, ip, proto string, cut *cutter, ans *answer) (*upConn, error, bool) {
	u, err, expired := p.tryOn(r.Context(), rq, deadline, perTry, func() bool { return r.Context().Err() != nil }, func(u *upConn) (bool, error) {
		if !cut.use(u) {
			return false, context.Cause(r.Context())
		}
		replayable, err := p.writeDirect(u, r, rq, ip, proto)
		if err == nil {
			err = readAnswerHead(u.br, p.maxResponseHead(), &ans.head)
		}
		if err != nil && r.Context().Err() != nil {
			err = context.Cause(r.Context())
		}
		return replayable, err
	})
	if u == nil {
		return nil, err, expired
	}
	return u, nil, false
}

// goneHook is a request context that runs one function when the client
// leaves (h2front's stream context), cheaper than context.AfterFunc.
type goneHook interface {
	// OnGone sets the function (nil: none; after that, it neither runs
	// nor is running); false: the client left already.
	OnGone(f func()) bool
}

// cutter cuts the upstream connection a request uses when its client
// leaves: a deadline long past ends the wait for the answer and its relay,
// and the connection is not reused.
type cutter struct {
	mu sync.Mutex // guards u and gone; SetDeadline under it does no I/O
	u  *upConn
	// gone: the client left (cut ran).
	gone bool
}

// watching is a cutter's watch of a request context, ended by end.
type watching struct {
	hook goneHook    // the context's own hook, if it has one
	stop func() bool // else context.AfterFunc's
}

func (w watching) end() {
	if w.hook != nil {
		w.hook.OnGone(nil)
		return
	}
	w.stop()
}

// watch starts the cutter afresh and has cut (c.cut, bound by the caller
// once) run when ctx ends: through the context's own hook on envgate's
// HTTP/2 server (no allocation), else context.AfterFunc.
func (c *cutter) watch(ctx context.Context, cut func()) watching {
	c.u, c.gone = nil, false // before cut can run
	if h, ok := ctx.(goneHook); ok {
		if !h.OnGone(cut) {
			c.gone = true
		}
		return watching{hook: h}
	}
	return watching{stop: context.AfterFunc(ctx, cut)}
}

// cut is run when the request's client leaves.
func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gone = true
	if c.u != nil {
		_ = c.u.nc.SetDeadline(aLongTimeAgo)
	}
}

// use makes u the connection to cut; false: the client left already.
func (c *cutter) use(u *upConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.u = u
	return !c.gone
}

// release stops watching the connection in use, before it goes back to
// the pool or is closed; false: it was cut (or may be), and must be
// closed.
func (c *cutter) release() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.u = nil
	return !c.gone
}

// answer is an upstream's response head on the direct path, pooled with
// its fields.
type answer struct {
	head h1.Response
}

var answers = sync.Pool{New: func() any { return new(answer) }}

func (a *answer) release() {
	clear(a.head.Fields) // the strings of the last head
	a.head.Fields = a.head.Fields[:0]
	answers.Put(a)
}

// writeDirect writes r's head, with Envoy's edge headers, the route's
// rewrite and header operations, and its body; replayable says it can be
// sent again.
func (p *Proxy) writeDirect(u *upConn, r *http.Request, rq *request, ip, proto string) (replayable bool, err error) {
	a := rq.dec.Action()
	ops := a.RequestHeaders
	w := u.bw
	writeRequestLine(w, rq, r.Method, requestPath(r), r.Host)
	conn := r.Header["Connection"]
	for k, vs := range r.Header {
		if dropDirectField(k, conn) || !ops.Empty() && touches(ops, k) {
			continue
		}
		for _, v := range vs {
			writeField(w, k, v)
		}
	}
	writeEdgeFields(w, ops, rq, ip, proto)
	writeOps(w, ops)
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	switch {
	case rq.body != nil:
		writeLength(w, int64(len(rq.body)))
		_, _ = w.Write(rq.body)
		return true, w.Flush()
	case r.Body == nil || r.Body == http.NoBody:
		if r.ContentLength == 0 && (r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch) {
			writeLength(w, 0)
		} else {
			_, _ = w.WriteString("\r\n")
		}
		return true, w.Flush()
	case r.ContentLength > 0:
		writeLength(w, r.ContentLength)
		n, err := io.CopyBuffer(writerOnlyW{w}, io.LimitReader(r.Body, r.ContentLength), *bp)
		if err == nil && n < r.ContentLength {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return false, &clientBodyError{err}
		}
		return false, w.Flush()
	default:
		// Unsized (HTTP/2 without content-length): chunked.
		_, _ = w.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		if _, err := h1.WriteChunked(w, r.Body, *bp); err != nil {
			return false, err
		}
		return false, w.Flush()
	}
}

func writeLength(w *bufio.Writer, n int64) {
	_, _ = w.WriteString("Content-Length: ")
	_, _ = w.WriteString(strconv.FormatInt(n, 10))
	_, _ = w.WriteString("\r\n\r\n")
}

// dropDirectField: what the upstream does not get from the client's
// fields (canonical names, as net/http keys them): hop-by-hop fields as
// ReverseProxy removes them and those Connection names, the client's
// X-Envoy-* (Envoy's cleanInternalHeaders) and the fields the gateway
// sets.
func dropDirectField(k string, conn []string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"Content-Length", "X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id":
		return true
	}
	return strings.HasPrefix(k, "X-Envoy-") || named(k, conn)
}

// named reports whether a Connection field's values name the field k.
func named(k string, conn []string) bool {
	for _, v := range conn {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), k) {
				return true
			}
		}
	}
	return false
}

// relayDirect answers w with the upstream's answer on u: its fields
// without the hop-by-hop ones, the route's response header operations and
// envgate's fields, the body as its head frames it (flushed as it comes
// when unsized), then its trailers. It reports whether u may serve again.
func (p *Proxy) relayDirect(w http.ResponseWriter, r *http.Request, rq *request, u *upConn, ans *answer) bool {
	resp := &ans.head
	h := w.Header()
	var declared []string // the trailer names the upstream announced
	// The fields' values share one backing array: one allocation for the
	// head, not one per field.
	vals := make([]string, 0, len(resp.Fields)+1)
	add := func(k, v string) {
		if vv, ok := h[k]; ok {
			h[k] = append(vv, v)
			return
		}
		vals = append(vals, v)
		n := len(vals)
		h[k] = vals[n-1 : n : n]
	}
	for _, f := range resp.Fields {
		if dropResponseField(f.Name, resp.Conn, false) {
			continue
		}
		k := http.CanonicalHeaderKey(f.Name)
		if k == "Trailer" {
			for _, t := range strings.Split(f.Value, ",") {
				if t = http.CanonicalHeaderKey(strings.TrimSpace(t)); t != "" {
					declared = append(declared, t)
					h["Trailer"] = append(h["Trailer"], t)
				}
			}
			continue
		}
		add(k, f.Value)
	}
	if resp.ContentLength >= 0 {
		add("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	applyHeaderOps(h, rq.dec.Action().ResponseHeaders)
	served := rq.dec.Env
	if rq.dec.Baseline != "" {
		served = rq.dec.Baseline
		h.Set(BaselineHeader, rq.dec.Baseline)
	}
	if p.o.DebugHeader {
		h.Set(UpstreamHeader, served+" "+rq.ep.Addr)
	}
	w.WriteHeader(resp.Status)
	if noBody(r.Method, resp.Status) {
		return !resp.Close
	}
	if n := resp.ContentLength; n >= 0 && int64(u.br.Buffered()) >= n {
		// The whole body is here (most answers): one write.
		b, _ := u.br.Peek(int(n))
		m, err := w.Write(b)
		_, _ = u.br.Discard(m)
		return err == nil && !resp.Close
	}
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	switch {
	case resp.ContentLength >= 0:
		n, err := io.CopyBuffer(w, io.LimitReader(u.br, resp.ContentLength), *bp)
		return err == nil && n == resp.ContentLength && !resp.Close
	case resp.Chunked:
		cr := h1.NewChunkedReader(u.br)
		if _, err := io.CopyBuffer(flushWriter{w}, cr, *bp); err != nil {
			return false
		}
		for _, f := range cr.Trailers {
			k := http.CanonicalHeaderKey(f.Name)
			if !slices.Contains(declared, k) {
				k = http.TrailerPrefix + k
			}
			h[k] = append(h[k], f.Value)
		}
		return !resp.Close
	default:
		// Delimited by the upstream closing the connection.
		_, _ = io.CopyBuffer(flushWriter{w}, u.br, *bp)
		return false
	}
}

// flushWriter sends each write at once: an unsized body may be a stream.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	if err == nil {
		err = http.NewResponseController(f.w).Flush()
	}
	return n, err
}
