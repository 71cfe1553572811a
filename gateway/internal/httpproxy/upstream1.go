package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
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
	gone := func() bool { return r.Context().Err() != nil }
	var u *upConn
	var resp *http.Response
	err := p.retry(rq, deadline, gone, func() tryResult {
		var err error
		var perTry bool
		u, resp, err, perTry = p.directTry(r, rq, deadline, a.Retries.PerTryTimeout, ip, proto)
		if resp == nil {
			return tryResult{err: err, perTry: perTry}
		}
		return tryResult{code: resp.StatusCode, grpc: resp.Header.Get("Grpc-Status")}
	}, func() {
		// A small answer is read to its end so the connection serves
		// again; a larger one costs the connection.
		n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10+1))
		resp.Body.Close()
		if err == nil && n <= 4<<10 && !resp.Close {
			p.pool.put(u)
		} else {
			_ = u.nc.Close()
		}
	})
	if resp == nil {
		if code, msg := upstreamFailure(rq, err, deadlinePassed(deadline), gone()); code != 0 {
			localReply(w, code, msg)
		}
		return
	}
	// The client leaving ends the relay of the body too.
	stop := context.AfterFunc(r.Context(), func() { _ = u.nc.Close() })
	reusable := p.relayDirect(w, rq, resp)
	if !stop() || !reusable {
		_ = u.nc.Close()
		return
	}
	if !deadline.IsZero() {
		_ = u.nc.SetDeadline(time.Time{})
	}
	p.pool.put(u)
}

// directTry sends r on a connection to rq.ep and reads the response's
// head (see tryOn).
func (p *Proxy) directTry(r *http.Request, rq *request, deadline time.Time, perTry time.Duration, ip, proto string) (*upConn, *http.Response, error, bool) {
	var resp *http.Response
	gone := func() bool { return r.Context().Err() != nil }
	u, err, expired := p.tryOn(r.Context(), rq, deadline, perTry, gone, func(u *upConn) (bool, error) {
		// The client leaving ends the wait.
		stop := context.AfterFunc(r.Context(), func() { _ = u.nc.SetDeadline(aLongTimeAgo) })
		replayable, err := p.writeDirect(u, r, rq, ip, proto)
		if err == nil {
			resp, err = readDirectResponse(u.br, r)
		}
		if !stop() && err == nil {
			err = context.Cause(r.Context())
		}
		return replayable, err
	})
	if u == nil {
		return nil, nil, err, expired
	}
	return u, resp, nil, false
}

// readDirectResponse reads a response to r, skipping 1xx interim answers.
func readDirectResponse(br *bufio.Reader, r *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, r)
		if err != nil {
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("101 Switching Protocols to a request that asked for no upgrade")
		case resp.StatusCode < 200:
			continue
		}
		return resp, nil
	}
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

// relayDirect answers w with resp: its fields without the hop-by-hop ones,
// the route's response header operations and envgate's fields, the body
// (flushed as it comes when unsized), then its trailers. It reports whether
// the upstream connection may serve again.
func (p *Proxy) relayDirect(w http.ResponseWriter, rq *request, resp *http.Response) bool {
	h := w.Header()
	conn := resp.Header["Connection"]
	for k, vv := range resp.Header {
		switch k {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
			continue
		}
		if named(k, conn) {
			continue
		}
		h[k] = vv
	}
	for k := range resp.Trailer {
		h.Add("Trailer", k)
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
	w.WriteHeader(resp.StatusCode)
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	var dst io.Writer = w
	if resp.ContentLength < 0 {
		dst = flushWriter{w}
	}
	_, err := io.CopyBuffer(dst, resp.Body, *bp)
	resp.Body.Close()
	if err != nil {
		return false
	}
	for k, vv := range resp.Trailer {
		h[k] = vv
	}
	return !resp.Close
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
