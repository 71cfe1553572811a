package h2front

import (
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/envgate/envgate/gateway/internal/hpackmemo"
)

// stream is one request and its response.
type stream struct {
	c     *conn
	id    uint32
	start time.Time
	ctx   streamCtx
	body  pipe

	// The reader's own: the request body's declared length (-1: none)
	// and what arrived of it.
	declared, received int64
	// trailer is the request's Trailer map, filled before the body's
	// end is seen (under body.mu).
	trailer http.Header

	remoteClosed atomic.Bool // the client ended its side (END_STREAM)
	endCounted   atomic.Bool // counted in the connection's ending (noteEnded)
	reset        atomic.Bool // either side reset the stream
	peerReset    atomic.Bool // the client did
	// Receive flow control: what the client may still send on the
	// stream, and what the handler read that was not granted again yet.
	recvAvail, unacked atomic.Int64

	// Under c.w.mu.
	sendWindow int64
	endSent    bool
	holdNext   bool // the next write is queued, not flushed (Request.Hold)

	// req is the request offered to Options.Relay, if it was.
	req Request
}

var (
	errStreamReset = errors.New("http2: stream reset")
	errClosedBody  = errors.New("http2: request body closed by the handler")
)

// resetByPeer ends the stream the client reset.
func (st *stream) resetByPeer() {
	st.peerReset.Store(true)
	st.resetLocal()
}

// resetLocal ends the stream's request: its context, its body, and the
// response writes waiting for a window.
func (st *stream) resetLocal() {
	st.reset.Store(true)
	st.ctx.cancel()
	// What the handler will not read goes back to the connection.
	dropped := st.body.closeWith(errStreamReset, nil)
	st.c.credit(nil, int64(dropped))
	st.c.consumed(dropped)
	st.c.w.mu.Lock()
	st.c.w.cond.Broadcast()
	st.c.w.mu.Unlock()
}

// onHeaders opens a stream, or takes a stream's trailers.
func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return connError{code: errProtocol, why: "HEADERS on an even stream"}
	}
	if f.HasPriority() && f.Priority.StreamDep == id {
		c.streamError(id, errProtocol)
		return nil
	}
	st, state := c.lookup(id)
	switch state {
	case stateKnown:
		return c.onTrailers(st, f)
	case stateClosed:
		if c.wasResetByUs(id) {
			return nil // trailers sent before our RST_STREAM arrived
		}
		return connError{code: errStreamClosed, why: "HEADERS on a closed stream"}
	}
	c.maxClientID.Store(id)
	c.smu.Lock()
	if c.goingAway || c.closed {
		c.smu.Unlock()
		return nil // past the GOAWAY's last stream: not processed
	}
	if c.active-int(c.ending.Load()) >= int(c.s.opts.MaxConcurrentStreams) {
		// What the client sends on it before our RST_STREAM arrives
		// is discarded, not a stream error that would hide the
		// REFUSED_STREAM (nothing of it was processed, RFC 9113
		// section 8.7).
		c.noteResetLocked(id)
		c.smu.Unlock()
		c.w.mu.Lock()
		_ = c.fr.WriteRSTStream(id, errRefusedStream)
		return c.queuedLocked()
	}
	c.active++
	if c.bytes != nil {
		c.bytes.CallStarted()
	}
	if c.idle != nil {
		c.idle.Stop()
	}
	st = &stream{c: c, id: id, start: time.Now(), declared: -1}
	st.body.cond.L = &st.body.mu
	st.recvAvail.Store(int64(c.s.opts.StreamWindow))
	c.w.mu.Lock()
	st.sendWindow = c.w.initialWindow
	c.w.mu.Unlock()
	c.streams[id] = st
	c.smu.Unlock()

	if g := c.s.opts.GRPC; g != nil {
		st.req.st = st
		if grpcRequest(f, &st.req) {
			c.offer(st, f, g)
			return nil
		}
		st.req, st.declared = Request{}, -1
	}
	if relay := c.s.opts.Relay; relay != nil {
		st.req.st = st
		if relayable(f, &st.req) {
			c.offer(st, f, relay)
			return nil
		}
	}
	req, code := c.newRequest(st, f)
	if code != ErrCodeNo {
		c.streamError(id, code)
		c.streamDone(st)
		return nil
	}
	if f.StreamEnded() {
		st.remoteClosed.Store(true)
		st.body.closeWith(io.EOF, nil)
	}
	h := c.s.handler
	if f.Truncated {
		h = http.HandlerFunc(headerListTooLong)
	}
	c.handlers.Add(1)
	c.s.workers.run(func() {
		defer c.handlers.Done()
		st.serve(h, req)
	})
	return nil
}

// offer runs relay on st's request on a worker (the handler if it
// declines).
func (c *conn) offer(st *stream, f *http2.MetaHeadersFrame, relay func(*Request) bool) {
	if f.StreamEnded() {
		st.remoteClosed.Store(true)
		st.body.closeWith(io.EOF, nil)
	}
	c.handlers.Add(1)
	c.s.workers.run(func() {
		defer c.handlers.Done()
		st.relay(relay, f)
	})
}

// headerListTooLong answers a request whose headers pass
// MaxHeaderListSize, as net/http does.
func headerListTooLong(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
	_, _ = io.WriteString(w, "<h1>HTTP Error 431</h1><p>Request Header Field(s) Too Large</p>")
}

// onTrailers takes the trailers ending a request body.
func (c *conn) onTrailers(st *stream, f *http2.MetaHeadersFrame) error {
	if st.remoteClosed.Load() && !st.reset.Load() {
		c.w.mu.Lock()
		closed := st.endSent
		c.w.mu.Unlock()
		if closed {
			// Both sides ended the stream: it is closed even while its
			// handler is still returning (RFC 9113 section 5.1, as when
			// it is gone from the map).
			return connError{code: errStreamClosed, why: "HEADERS on a closed stream"}
		}
	}
	if st.remoteClosed.Load() || st.reset.Load() {
		c.streamError(st.id, errStreamClosed)
		return nil
	}
	if !f.StreamEnded() {
		c.streamError(st.id, errProtocol)
		return nil
	}
	if len(f.PseudoFields()) > 0 || st.declared >= 0 && st.received != st.declared {
		c.streamError(st.id, errProtocol)
		return nil
	}
	st.remoteClosed.Store(true)
	st.body.closeWith(io.EOF, func() {
		if st.trailer == nil {
			return
		}
		for _, hf := range f.RegularFields() {
			k := textproto.CanonicalMIMEHeaderKey(hf.Name)
			st.trailer[k] = append(st.trailer[k], hf.Value)
		}
	})
	return nil
}

// newRequest makes the handler's request of a stream's headers, or says
// which stream error they are (RFC 9113 section 8.3).
func (c *conn) newRequest(st *stream, f *http2.MetaHeadersFrame) (*http.Request, http2.ErrCode) {
	method, path := f.PseudoValue("method"), f.PseudoValue("path")
	scheme, authority := f.PseudoValue("scheme"), f.PseudoValue("authority")
	var u *url.URL
	uri := path
	if method == "CONNECT" {
		if scheme != "" || path != "" || authority == "" {
			return nil, errProtocol
		}
		u, uri = &url.URL{Host: authority}, authority
	} else {
		if method == "" || path == "" || scheme == "" {
			return nil, errProtocol
		}
		switch {
		case path == "*" && method == "OPTIONS":
			u = &url.URL{Path: "*"}
		case path[0] != '/':
			return nil, errProtocol
		default:
			var err error
			if u, err = url.ParseRequestURI(path); err != nil {
				return nil, errProtocol
			}
		}
	}
	regular := f.RegularFields()
	h := make(http.Header, len(regular))
	// The values share one backing array: one allocation for the list,
	// not one per field.
	vals := make([]string, 0, len(regular))
	var cookies []string
	for _, hf := range regular {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return nil, errProtocol // connection-specific (RFC 9113 section 8.2.2)
		case "te":
			if hf.Value != "trailers" {
				return nil, errProtocol
			}
		case "cookie":
			// Crumbs are joined for HTTP/1.1 semantics (section 8.2.3).
			cookies = append(cookies, hf.Value)
			continue
		}
		k := canonical(hf.Name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, hf.Value)
			continue
		}
		vals = append(vals, hf.Value)
		n := len(vals)
		h[k] = vals[n-1 : n : n]
	}
	if len(cookies) > 0 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	if authority == "" {
		authority = h.Get("Host")
	}
	if cl := h["Content-Length"]; len(cl) > 0 {
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 || len(cl) > 1 && !allSame(cl) {
			return nil, errProtocol
		}
		st.declared = n
	}
	if f.StreamEnded() && st.declared > 0 {
		return nil, errProtocol
	}
	r := &http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		Header:     h,
		Host:       authority,
		RemoteAddr: c.peer,
		RequestURI: uri,
		TLS:        tlsState(c.nc),
	}
	if f.StreamEnded() {
		r.Body, r.ContentLength = http.NoBody, 0
	} else {
		r.Body, r.ContentLength = &requestBody{st: st, expect: strings.EqualFold(h.Get("Expect"), "100-continue")}, st.declared
		for _, v := range h["Trailer"] {
			for _, k := range strings.Split(v, ",") {
				k = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(k))
				if k != "" && httpguts.ValidTrailerHeader(k) {
					if r.Trailer == nil {
						r.Trailer = http.Header{}
					}
					r.Trailer[k] = nil
				}
			}
		}
		st.trailer = r.Trailer
	}
	return r.WithContext(&st.ctx), ErrCodeNo
}

func allSame(vv []string) bool {
	for _, v := range vv[1:] {
		if v != vv[0] {
			return false
		}
	}
	return true
}

// serve runs the handler and ends the stream.
func (st *stream) serve(h http.Handler, r *http.Request) {
	rw := &responseWriter{st: st, req: r, header: http.Header{}, head: r.Method == "HEAD"}
	defer st.c.streamDone(st)
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				st.c.s.opts.Log.Error("http2 handler panicked", "peer", r.RemoteAddr, "path", r.URL.Path, "panic", p)
			}
			st.c.streamError(st.id, errInternal)
		}
	}()
	if rb, ok := r.Body.(*requestBody); ok {
		rb.rw = rw
	}
	h.ServeHTTP(rw, r)
	rw.finish()
	if h := st.c.s.testHookStreamFinished; h != nil {
		h()
	}
}

// noteEnded counts st as closed once its response's END_STREAM is written
// and the client had ended its side: the client sees the stream closed
// when that frame arrives and may open another within
// SETTINGS_MAX_CONCURRENT_STREAMS, which counts only open and half-closed
// streams (RFC 9113 section 5.1.2), while the handler may still be
// returning (streamDone). Counted in active until then, such a stream made
// a client that keeps exactly the limit in flight get REFUSED_STREAM
// (make bench: 3 of 30,000 calls on connections of 100 in flight). w.mu
// held.
func (c *conn) noteEnded(st *stream) {
	if st.remoteClosed.Load() && st.endCounted.CompareAndSwap(false, true) {
		c.ending.Add(1)
	}
}

// streamDone forgets a stream whose handler returned: a request body the
// client is still sending is cut short with RST_STREAM(NO_ERROR) once
// the response is complete (RFC 9113 section 8.1), and what was left
// unread goes back to the connection's window.
func (c *conn) streamDone(st *stream) {
	if !st.remoteClosed.Load() && !st.reset.Load() {
		st.reset.Store(true)
		c.smu.Lock()
		c.noteResetLocked(st.id)
		c.smu.Unlock()
		c.w.mu.Lock()
		_ = c.fr.WriteRSTStream(st.id, ErrCodeNo)
		c.w.flushLocked()
	}
	dropped := st.body.closeWith(errClosedBody, nil)
	c.credit(nil, int64(dropped))
	c.consumed(dropped)
	st.ctx.cancel()
	c.smu.Lock()
	delete(c.streams, st.id)
	c.active--
	if st.endCounted.Load() {
		c.ending.Add(-1)
	}
	idle, goingAway := c.active == 0, c.goingAway
	c.smu.Unlock()
	if c.counter != nil {
		c.counter.StreamEnded(st.peerReset.Load() && time.Since(st.start) < prematureReset)
	}
	if idle {
		if goingAway {
			c.w.waitWritten()
			c.close(nil)
			return
		}
		c.armIdle()
	}
}

// requestBody is what a handler reads the request body from; what it
// reads goes back to the client's windows.
type requestBody struct {
	st     *stream
	rw     *responseWriter
	expect bool // Expect: 100-continue, answered at the first read
	closed bool
}

func (b *requestBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.expect {
		b.expect = false
		if b.rw != nil {
			b.rw.sendContinue()
		}
	}
	n, err := b.st.body.read(p)
	if n > 0 {
		b.st.c.credit(b.st, int64(n))
		b.st.c.consumed(n)
	}
	return n, err
}

func (b *requestBody) Close() error {
	if !b.closed {
		b.closed = true
		dropped := b.st.body.closeWith(errClosedBody, nil)
		b.st.c.credit(nil, int64(dropped))
		b.st.c.consumed(dropped)
	}
	return nil
}

// canonical is the header key of an HTTP/2 field name (lower case on
// the wire), without allocating for the common ones.
func canonical(name string) string {
	if k, ok := commonCanonical[name]; ok {
		return k
	}
	return textproto.CanonicalMIMEHeaderKey(name)
}

// lower is the field name of a header key.
func lower(k string) string {
	if n, ok := commonLower[k]; ok {
		return n
	}
	return strings.ToLower(k)
}

var commonCanonical, commonLower = func() (map[string]string, map[string]string) {
	names := []string{"accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges", "age",
		"access-control-allow-origin", "allow", "authorization", "cache-control", "content-disposition",
		"content-encoding", "content-language", "content-length", "content-location", "content-range",
		"content-type", "cookie", "date", "env", "etag", "expect", "expires", "from", "host", "if-match",
		"if-modified-since", "if-none-match", "if-unmodified-since", "last-modified", "link", "location",
		"max-forwards", "origin", "proxy-authenticate", "proxy-authorization", "range", "referer", "refresh",
		"retry-after", "server", "set-cookie", "strict-transport-security", "trailer", "user-agent", "vary",
		"via", "www-authenticate", "x-forwarded-for", "x-forwarded-proto", "x-request-id",
		"x-envgate-upstream", "x-envgate-baseline", "grpc-status", "grpc-message", "grpc-timeout",
		"grpc-encoding", "grpc-accept-encoding", "te", "x-envoy-upstream-service-time", "traceparent", "tracestate"}
	c, l := make(map[string]string, len(names)), make(map[string]string, len(names))
	for _, n := range names {
		k := textproto.CanonicalMIMEHeaderKey(n)
		c[n], l[k] = k, n
	}
	return c, l
}()

// responseWriter is a stream's http.ResponseWriter. The body is kept
// until bufSize or a flush, so a response the handler writes whole goes
// out as HEADERS and DATA in one write, with its length said.
type responseWriter struct {
	st          *stream
	req         *http.Request
	header      http.Header
	status      int
	wroteHeader bool // the handler said its status
	sentHeader  bool // the HEADERS frame went out
	head        bool
	buf         []byte
}

const bufSize = 4 << 10

var _ interface {
	http.ResponseWriter
	http.Flusher
} = (*responseWriter)(nil)

func (rw *responseWriter) Header() http.Header { return rw.header }

func (rw *responseWriter) WriteHeader(code int) {
	if rw.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// Informational: sent now, the final status still to come.
		rw.st.c.writeHeaders(rw.st, code, rw.header, false, nil, false)
		return
	}
	rw.status, rw.wroteHeader = code, true
}

func (rw *responseWriter) sendContinue() {
	if !rw.sentHeader && !rw.wroteHeader {
		rw.st.c.writeHeaders(rw.st, http.StatusContinue, nil, false, nil, false)
	}
}

func (rw *responseWriter) Write(p []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(rw.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if rw.head {
		return len(p), nil
	}
	if rw.st.reset.Load() {
		return 0, errStreamReset
	}
	if !rw.sentHeader && len(rw.buf) == 0 && len(p) > 0 {
		if _, ok := rw.header["Content-Type"]; !ok {
			rw.header.Set("Content-Type", http.DetectContentType(p))
		}
	}
	if len(rw.buf)+len(p) <= bufSize {
		rw.buf = append(rw.buf, p...)
		return len(p), nil
	}
	if err := rw.flush(); err != nil {
		return 0, err
	}
	if len(p) <= bufSize {
		rw.buf = append(rw.buf, p...)
		return len(p), nil
	}
	if err := rw.st.c.writeData(rw.st, p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (rw *responseWriter) WriteString(s string) (int, error) {
	return rw.Write([]byte(s))
}

// Flush sends the headers and what the body has so far.
func (rw *responseWriter) Flush() { _ = rw.FlushError() }

// FlushError is Flush, reporting a stream or connection that ended
// (http.ResponseController).
func (rw *responseWriter) FlushError() error {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.flush()
}

// EnableFullDuplex is a no-op: an HTTP/2 handler may always read the
// request while it writes the response (http.ResponseController).
func (rw *responseWriter) EnableFullDuplex() error { return nil }

func (rw *responseWriter) flush() error {
	c := rw.st.c
	if !rw.sentHeader {
		rw.sentHeader = true
		if err := c.writeHeaders(rw.st, rw.status, rw.header, false, rw.buf, false); err != nil {
			return err
		}
		rw.buf = rw.buf[:0]
		return nil
	}
	if len(rw.buf) == 0 {
		return nil
	}
	err := c.writeData(rw.st, rw.buf, false)
	rw.buf = rw.buf[:0]
	return err
}

// finish ends the response once the handler returned: its length when it
// was written whole, then END_STREAM on the last DATA or on the trailers.
func (rw *responseWriter) finish() {
	if rw.st.reset.Load() {
		return
	}
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	trailers := rw.trailers()
	c := rw.st.c
	if !rw.sentHeader {
		rw.sentHeader = true
		_, hasLen := rw.header["Content-Length"]
		if len(trailers) == 0 && !hasLen && bodyAllowed(rw.status) && (len(rw.buf) > 0 || !rw.head) {
			rw.header["Content-Length"] = []string{strconv.Itoa(len(rw.buf))}
		}
		_ = c.writeHeaders(rw.st, rw.status, rw.header, len(trailers) == 0, rw.buf, false)
	} else {
		_ = c.writeData(rw.st, rw.buf, len(trailers) == 0)
	}
	rw.buf = nil
	if len(trailers) > 0 {
		_ = c.writeHeaders(rw.st, 0, trailers, true, nil, true)
	}
}

// trailers are the declared trailers (Trailer) set after the headers, and
// those set with http.TrailerPrefix.
func (rw *responseWriter) trailers() http.Header {
	var t http.Header
	for _, v := range rw.header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			k = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(k))
			if vv := rw.header[k]; len(vv) > 0 && httpguts.ValidTrailerHeader(k) {
				if t == nil {
					t = http.Header{}
				}
				t[k] = vv
			}
		}
	}
	for k, vv := range rw.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && len(vv) > 0 {
			if t == nil {
				t = http.Header{}
			}
			t[textproto.CanonicalMIMEHeaderKey(name)] = vv
		}
	}
	return t
}

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// writeHeaders sends a HEADERS frame (split in CONTINUATION frames past
// the client's frame size) of status and h, or of trailers, then body if
// any, in one write when the windows allow. end ends the stream on the
// last frame.
func (c *conn) writeHeaders(st *stream, status int, h http.Header, end bool, body []byte, trailers bool) error {
	return c.writeBlock(st, status, func(enc *hpackmemo.Encoder) bool { return encodeHeader(enc, h) }, end, one(body), trailers)
}

// encodeHeader encodes h's fields but the trailers set by prefix and the
// connection-specific ones; it reports whether one was a date.
func encodeHeader(enc *hpackmemo.Encoder, h http.Header) (hasDate bool) {
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		switch k {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade":
			continue // connection-specific: not in HTTP/2
		case "Date":
			hasDate = true
		}
		name := lower(k)
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				enc.WriteField(hpack.HeaderField{Name: name, Value: v})
			}
		}
	}
	return hasDate
}

// writeBlock sends a HEADERS frame (split in CONTINUATION frames past the
// client's frame size) of status and what encode encodes, or of
// trailers, then the body's parts if any, in one write when the windows
// allow. end ends the stream on the last frame.
func (c *conn) writeBlock(st *stream, status int, encode func(*hpackmemo.Encoder) (hasDate bool), end bool, body [][]byte, trailers bool) error {
	w := &c.w
	w.mu.Lock()
	if w.err != nil || st.reset.Load() || st.endSent {
		w.mu.Unlock()
		return errStreamReset
	}
	w.hbuf.b = w.hbuf.b[:0]
	if !trailers {
		w.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText(status)})
	}
	hasDate := encode(w.enc)
	if !trailers && !hasDate && status >= 200 {
		w.enc.WriteField(hpack.HeaderField{Name: "date", Value: httpDate()})
	}
	w.sentSince.Store(true)
	block := w.hbuf.b
	size := partsLen(body)
	headersEnd := end && size == 0
	first := block[:min(len(block), w.maxFrame)]
	rest := block[len(first):]
	_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: first, EndStream: headersEnd, EndHeaders: len(rest) == 0})
	for len(rest) > 0 {
		n := min(len(rest), w.maxFrame)
		_ = c.fr.WriteContinuation(st.id, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	if headersEnd {
		st.endSent = true
		c.noteEnded(st)
	}
	if size == 0 {
		c.flushUnlessHeld(st)
		return nil
	}
	return c.writeDataLocked(st, body, size, end)
}

// one is p as the parts of a body.
func one(p []byte) [][]byte {
	if len(p) == 0 {
		return nil
	}
	return [][]byte{p}
}

func partsLen(parts [][]byte) int {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	return n
}

// writeData sends p on st as flow control allows, waiting for the
// client's windows and for its queue to drain; end ends the stream.
func (c *conn) writeData(st *stream, p []byte, end bool) error {
	return c.writeDataParts(st, one(p), end)
}

// writeDataParts is writeData of a body in parts, which frames span: a
// gRPC message's prefix and its buffers go without being put together
// first.
func (c *conn) writeDataParts(st *stream, parts [][]byte, end bool) error {
	size := partsLen(parts)
	if size == 0 && !end {
		return nil
	}
	c.w.mu.Lock()
	return c.writeDataLocked(st, parts, size, end)
}

// writeDataLocked writes size bytes of parts (which it consumes) with c.w.mu
// held; it returns with it unlocked.
func (c *conn) writeDataLocked(st *stream, parts [][]byte, size int, end bool) error {
	w := &c.w
	for {
		if w.err != nil || st.reset.Load() || st.endSent {
			w.mu.Unlock()
			return errStreamReset
		}
		if size == 0 {
			// END_STREAM alone.
			w.dataHeader(st.id, 0, true)
			st.endSent = true
			c.noteEnded(st)
			c.flushUnlessHeld(st)
			return nil
		}
		avail := int(min(int64(size), st.sendWindow, w.connWindow))
		if avail >= directMin && w.vec != nil && !w.writing {
			parts, size = c.writeDirect(st, parts, size, avail, end)
			if size == 0 && w.err == nil {
				c.flushUnlessHeld(st) // what others queued meanwhile
				return nil
			}
			continue
		}
		n := min(avail, w.maxFrame)
		if n > 0 {
			// Room for the rest at once, not by doubling per frame.
			if w.buf == nil {
				w.buf = getWriteBuf()
			}
			w.buf = slices.Grow(w.buf, size+size/int(w.maxFrame+1)*frameHeaderLen+frameHeaderLen)
		}
		if n <= 0 || len(w.buf) >= c.s.opts.MaxQueued {
			// No window, or the client is not reading: send what is
			// queued and wait.
			if !w.writing && len(w.buf) > 0 {
				w.flushLocked()
				w.mu.Lock()
				continue
			}
			w.cond.Wait()
			continue
		}
		last := n == size && end
		w.sentSince.Store(true)
		w.dataHeader(st.id, n, last)
		for k := n; k > 0; {
			var p []byte
			p, parts = cutPart(parts, k)
			w.buf = append(w.buf, p...)
			k -= len(p)
		}
		st.sendWindow -= int64(n)
		w.connWindow -= int64(n)
		size -= n
		if size == 0 {
			if last {
				st.endSent = true
				c.noteEnded(st)
			}
			c.flushUnlessHeld(st)
			return nil
		}
	}
}

// directMin is the least payload a DATA write sends from the caller's
// buffers (writeDirect) rather than copied into the queue: below it the
// copy costs less than the longer vector.
const directMin = 16 << 10

// writeDirect sends avail bytes of parts (size in all), as DATA frames of
// st, from parts themselves: what is queued, then each frame's header and
// its payload, in one vectored write done here, so that the caller may
// reuse parts once it returns. c.w.mu is held, and this goroutine becomes
// the connection's writer for the write (nothing else is writing); it
// returns with mu held, the rest of parts and its size.
func (c *conn) writeDirect(st *stream, parts [][]byte, size, avail int, end bool) ([][]byte, int) {
	w := &c.w
	last := avail == size && end
	frames := (avail + w.maxFrame - 1) / w.maxFrame
	w.hdrs = slices.Grow(w.hdrs[:0], frames*frameHeaderLen)[:frames*frameHeaderLen]
	vec := w.bufs[:0]
	queued := w.buf
	if len(queued) > 0 {
		vec = append(vec, queued)
	}
	for i, rest := 0, avail; rest > 0; i++ {
		n := min(rest, w.maxFrame)
		var flags byte
		if last && n == rest {
			flags = byte(http2.FlagDataEndStream)
		}
		h := w.hdrs[i*frameHeaderLen : (i+1)*frameHeaderLen]
		h[0], h[1], h[2], h[3], h[4] = byte(n>>16), byte(n>>8), byte(n), byte(http2.FrameData), flags
		binary.BigEndian.PutUint32(h[5:], st.id)
		vec = append(vec, h)
		for k := n; k > 0; {
			var p []byte
			p, parts = cutPart(parts, k)
			vec = append(vec, p)
			k -= len(p)
		}
		rest -= n
	}
	st.sendWindow -= int64(avail)
	w.connWindow -= int64(avail)
	size -= avail
	w.sentSince.Store(true)
	if last {
		st.endSent = true
		c.noteEnded(st)
	}
	st.holdNext = false // nothing of this write can wait: parts are the caller's
	w.buf = nil
	w.writing = true
	w.mu.Unlock()
	out := vec // the write consumes its vector
	err := w.writeVec(&out)
	w.mu.Lock()
	clear(vec) // hold none of the caller's buffers
	w.bufs = vec[:0]
	if queued != nil {
		putWriteBuf(queued)
	}
	w.writing = false
	w.cond.Broadcast() // written: what waited for the queue to drain goes on
	if err != nil && w.err == nil {
		w.err = err
		w.mu.Unlock()
		_ = w.nc.Close() // the reader then ends the connection
		w.mu.Lock()
	}
	return parts, size
}

// cutPart takes up to k bytes from the front of parts: the piece, and
// what is left of parts.
func cutPart(parts [][]byte, k int) ([]byte, [][]byte) {
	m := min(k, len(parts[0]))
	p := parts[0][:m]
	if parts[0] = parts[0][m:]; len(parts[0]) == 0 {
		parts = parts[1:]
	}
	return p, parts
}

// flushUnlessHeld ends a write of st: the queue is written unless the
// write was to be held (Request.Hold). c.w.mu held; it returns with it
// unlocked.
func (c *conn) flushUnlessHeld(st *stream) {
	if st.holdNext {
		st.holdNext = false
		c.w.mu.Unlock()
		return
	}
	c.w.flushLocked()
}

// statusText is a status code's :status value.
func statusText(code int) string {
	switch code {
	case 200:
		return "200"
	case 404:
		return "404"
	}
	return strconv.Itoa(code)
}

// httpDate is the Date field, formatted once a second.
func httpDate() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.unix == now {
		return d.text
	}
	d := &dateText{now, time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.text
}

type dateText struct {
	unix int64
	text string
}

var cachedDate atomic.Pointer[dateText]
