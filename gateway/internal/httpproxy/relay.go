package httpproxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/envgate/envgate/gateway/internal/fieldmap"
	"github.com/envgate/envgate/gateway/internal/forwarded"
	"github.com/envgate/envgate/gateway/internal/h1"
	"github.com/envgate/envgate/gateway/internal/h2front"
	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/sniff"
)

// relayState is a relayed request's reused memory: the routing view of
// its fields and the answer's fields.
type relayState struct {
	headers map[string][]string
	vals    []string
	out     []hpack.HeaderField
	ans     answer
	cut     cutter
	// valuesFn and cutFn are values and cut.cut, bound once.
	valuesFn func(name string) []string
	cutFn    func()
}

var relayStates = sync.Pool{New: func() any {
	s := &relayState{headers: map[string][]string{}}
	s.valuesFn, s.cutFn = s.values, s.cut.cut
	return s
}}

func (s *relayState) values(name string) []string {
	if v, ok := s.headers[name]; ok {
		return v
	}
	return s.headers[lowerASCII(name)]
}

// Relay serves a bodiless REST request of an HTTP/2 connection (h2front)
// from its decoded fields on a pooled HTTP/1.1 upstream connection, as the
// HTTP/1.1 fast path serves its requests: no http.Request, no header map
// per side, no ResponseWriter. It returns false, having done nothing, for
// what needs ServeHTTP: gRPC, tracing, direct responses, redirects,
// response header operations, HTTP/2 upstreams.
func (p *Proxy) Relay(r *h2front.Request) bool {
	if p.o.Tracer != nil || p.o.Propagator != nil {
		return false
	}
	s := relayStates.Get().(*relayState)
	defer func() {
		clear(s.headers)
		clear(s.vals)
		clear(s.out)
		s.vals, s.out = s.vals[:0], s.out[:0]
		relayStates.Put(s)
	}()
	for _, f := range r.Fields {
		if f.Name == "content-type" && sniff.IsGRPC(f.Value) {
			return false // the gRPC server's
		}
		s.vals = fieldmap.Add(s.headers, s.vals, f.Name, f.Value)
	}
	rreq := route.Request{Headers: s.headers, Path: r.Path, Authority: r.Authority, Method: r.Method}
	dec, decErr, ep, epErr, full := p.decideSimple(&rreq)
	if full || decErr == nil && !dec.Action().ResponseHeaders.Empty() {
		return false
	}

	rq := &request{id: forwarded.RequestID(), start: time.Now(), dec: dec, ep: ep}
	peer := r.RemoteAddr()
	ex := exchange{proto: "HTTP/2.0", method: r.Method, path: r.Path, authority: r.Authority, peer: peer, values: s.valuesFn}
	if p.o.AccessLog != nil {
		if ua := s.headers["user-agent"]; len(ua) > 0 {
			ex.userAgent = ua[0]
		}
	}
	var code int
	var out int64
	if p.o.Observer != nil {
		p.o.Observer.RequestStarted()
	}
	finished := false
	defer func() {
		if !finished {
			p.finish(context.Background(), rq, &ex, code, 0, out)
		}
	}()
	reply := func(status int, msg string) bool {
		code = status
		body := msg + "\n"
		out = int64(len(body))
		s.out = append(s.out[:0],
			hpack.HeaderField{Name: "content-type", Value: "text/plain; charset=utf-8"},
			hpack.HeaderField{Name: "x-content-type-options", Value: "nosniff"},
			hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(body))})
		_ = r.WriteHead(status, s.out, []byte(body), true)
		return true
	}
	if l := p.o.Limiter; l != nil {
		if err := l.Acquire(); err != nil {
			rq.flags = "OM"
			return reply(http.StatusServiceUnavailable, err.Error())
		}
		defer l.Release()
	}
	if status, flags, msg := refusal(dec, decErr, epErr); status != 0 {
		rq.flags = flags
		return reply(status, msg)
	}
	a := dec.Action()
	if a.Rewrite != nil && a.Rewrite.URI != "" {
		rq.prefix = matchedPrefix(dec.Rule, &rreq)
	}
	rq.canRetry = true // no body to keep
	var deadline time.Time
	if a.Timeout > 0 {
		deadline = rq.start.Add(a.Timeout)
	}
	ip := peer
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	rq.xff = ip
	if prior := s.headers["x-forwarded-for"]; len(prior) > 0 {
		rq.xff = forwarded.For(prior, ip)
	}
	proto := "http"
	if r.TLS() != nil {
		proto = "https"
	}

	ctx := r.Context()
	// The client leaving cuts the upstream connection in use; the hook
	// is off before s goes back to its pool.
	cut := &s.cut
	defer cut.watch(ctx, s.cutFn).end()
	gone := func() bool { return ctx.Err() != nil }
	ans := &s.ans
	u, err := p.retryAnswer(rq, deadline, gone, cut, ans, r.Method, func() (*upConn, error, bool) {
		return p.tryOn(ctx, rq, deadline, a.Retries.PerTryTimeout, gone, func(u *upConn) (bool, error) {
			if !cut.use(u) {
				return false, context.Canceled
			}
			p.writeRelayed(u, r, rq, ip, proto)
			err := u.flushForAnswer()
			if err == nil {
				err = readAnswerHead(u.br, p.maxResponseHead(), &ans.head)
			}
			if err != nil && ctx.Err() != nil {
				err = ctx.Err()
			}
			return true, err
		})
	})
	if u == nil {
		status, msg := upstreamFailure(rq, err, deadlinePassed(deadline), gone())
		if status == 0 {
			return true // the client left
		}
		return reply(status, msg)
	}
	code = ans.head.Status
	// The upstream connection goes back to the pool, and the request is
	// accounted for, before the answer's last frame: a client that has
	// its answer finds both done, as on the other paths.
	p.relayAnswer(r, rq, u, s, func(n int64, reusable bool) {
		out = n
		switch {
		case !cut.release() || !reusable:
			_ = u.nc.Close()
			if gone() {
				rq.flags = "DC"
			}
		default:
			if !deadline.IsZero() {
				_ = u.nc.SetDeadline(time.Time{})
			}
			rq.end = time.Now()
			p.pool.put(u, rq.end)
		}
		finished = true
		p.finish(context.Background(), rq, &ex, code, 0, out)
	})
	return true
}

// writeRelayed writes the request's head for the upstream into u's
// buffer: the request line and Host (with the route's rewrite), the
// client's fields but hop-by-hop ones and those the gateway sets, cookie
// crumbs joined (RFC 9113 section 8.2.3), Envoy's edge fields and the
// route's request header operations.
func (p *Proxy) writeRelayed(u *upConn, r *h2front.Request, rq *request, ip, proto string) {
	ops := rq.dec.Action().RequestHeaders
	w := u.bw
	writeRequestLine(w, rq, r.Method, r.Path, r.Authority)
	cookies := 0
	for _, f := range r.Fields {
		switch {
		case f.Name == "host" || dropRequestField(f.Name) || !ops.Empty() && touches(ops, f.Name):
			continue
		case f.Name == "cookie":
			cookies++
			continue
		}
		writeField(w, f.Name, f.Value)
	}
	if cookies > 0 {
		_, _ = w.WriteString("cookie: ")
		sep := ""
		for _, f := range r.Fields {
			if f.Name == "cookie" {
				_, _ = w.WriteString(sep)
				_, _ = w.WriteString(f.Value)
				sep = "; "
			}
		}
		_, _ = w.WriteString("\r\n")
	}
	writeEdgeFields(w, ops, rq, ip, proto)
	writeOps(w, ops)
	if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		_, _ = w.WriteString("content-length: 0\r\n")
	}
	_, _ = w.WriteString("\r\n")
}

// relayAnswer sends the upstream's answer on u to the client: its fields
// without the hop-by-hop ones and with envgate's, the body as its head
// frames it, then its trailers. end is called once, before the last frame
// (or at the failure that cuts the answer short), with the body bytes
// relayed and whether u may serve again; u is not read after it.
func (p *Proxy) relayAnswer(r *h2front.Request, rq *request, u *upConn, s *relayState, end func(n int64, reusable bool)) {
	resp := &s.ans.head
	s.out = s.out[:0]
	for _, f := range resp.Fields {
		if dropResponseField(f.Name, resp.Conn, true) {
			continue
		}
		s.out = append(s.out, hpack.HeaderField{Name: f.Name, Value: f.Value})
	}
	if resp.ContentLength >= 0 {
		s.out = append(s.out, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(resp.ContentLength, 10)})
	}
	served := rq.dec.Env
	if rq.dec.Baseline != "" {
		served = rq.dec.Baseline
		s.out = append(s.out, hpack.HeaderField{Name: strings.ToLower(BaselineHeader), Value: rq.dec.Baseline})
	}
	if p.o.DebugHeader {
		s.out = append(s.out, hpack.HeaderField{Name: strings.ToLower(UpstreamHeader), Value: served + " " + rq.ep.Addr})
	}
	if noBody(r.Method, resp.Status) {
		end(0, !resp.Close)
		_ = r.WriteHead(resp.Status, s.out, nil, true)
		return
	}
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	if n := resp.ContentLength; n >= 0 && int64(u.br.Buffered()) >= n && n <= int64(len(buf)) {
		// The whole body is here (most answers): HEADERS and DATA in
		// one write, from a copy, as u may serve another request.
		b, _ := u.br.Peek(int(n))
		m := copy(buf, b)
		_, _ = u.br.Discard(m)
		end(n, !resp.Close)
		_ = r.WriteHead(resp.Status, s.out, buf[:m], true)
		return
	}
	if err := r.WriteHead(resp.Status, s.out, nil, false); err != nil {
		end(0, false)
		return
	}
	var body io.Reader
	var chunked *h1.ChunkedReader
	switch {
	case resp.ContentLength >= 0:
		body = io.LimitReader(u.br, resp.ContentLength)
	case resp.Chunked:
		chunked = h1.NewChunkedReader(u.br)
		body = chunked
	default:
		body = u.br // until the upstream closes
	}
	var n int64
	for {
		m, err := body.Read(buf)
		if m > 0 {
			n += int64(m)
			if werr := r.WriteData(buf[:m], false); werr != nil {
				end(n, false)
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			end(n, false)
			return
		}
	}
	switch {
	case resp.ContentLength >= 0 && n < resp.ContentLength:
		end(n, false) // cut short: h2front resets the stream
	case chunked != nil && len(chunked.Trailers) > 0:
		end(n, !resp.Close)
		s.out = s.out[:0]
		for _, f := range chunked.Trailers {
			s.out = append(s.out, hpack.HeaderField{Name: f.Name, Value: f.Value})
		}
		_ = r.WriteTrailers(s.out)
	default:
		// Delimited by the upstream closing: whole, and not reused.
		end(n, !resp.Close && (resp.ContentLength >= 0 || resp.Chunked))
		_ = r.WriteData(nil, true)
	}
}
