package h2front

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/envgate/envgate/gateway/internal/hpackmemo"
)

// Request is a request as decoded, offered to Options.Relay (one without
// a body: END_STREAM on its HEADERS) or Options.GRPC (a gRPC call, its
// body read with Read) before the http.Handler adapter: they answer it
// from its fields without an http.Request, its header map and the
// ResponseWriter's, which cost REST over HTTP/2 about a tenth of its CPU
// (docs/h2front.md).
type Request struct {
	st                              *stream
	Method, Scheme, Authority, Path string
	// Fields are the regular fields as received: lower-case names, in
	// order, cookie crumbs apart (RFC 9113 section 8.2.3).
	Fields []hpack.HeaderField
}

// RemoteAddr is the client's address.
func (r *Request) RemoteAddr() string { return r.st.c.peer }

// Addr is the connection's remote address as it is (the edge listener's
// edge.Addr, which keeps the connection's accounts).
func (r *Request) Addr() net.Addr { return r.st.c.nc.RemoteAddr() }

// TLS is the connection's TLS state, nil for plaintext.
func (r *Request) TLS() *tls.ConnectionState { return tlsState(r.st.c.nc) }

// Context ends when the client resets the stream or the connection ends;
// its OnGone method (streamCtx.OnGone) runs one function then without an
// allocation.
func (r *Request) Context() context.Context { return &r.st.ctx }

// SetTimeout makes the request's context end with
// context.DeadlineExceeded after d, with that deadline (a gRPC call's
// grpc-timeout), where a context.WithTimeout over it would cost a context,
// a timer and a registration with it. The handler calls it once, before
// it passes the context on.
func (r *Request) SetTimeout(d time.Duration) { r.st.ctx.setTimeout(d) }

// ConnValue is a value made by mk once for the request's connection and
// shared by all of its requests (a relay's view of the client: its
// address, its TLS state), so that it is not made again per request.
func (r *Request) ConnValue(mk func() any) any {
	c := r.st.c
	if v := c.local.Load(); v != nil {
		return v
	}
	c.local.CompareAndSwap(nil, mk())
	return c.local.Load()
}

// Read reads the request body; what it reads goes back to the client's
// windows. It returns io.EOF at the body's end, and an error when the
// stream was reset or its handler returned.
func (r *Request) Read(p []byte) (int, error) {
	n, err := r.ReadHeld(p)
	r.Consumed(n)
	return n, err
}

// Buffered is how many bytes of the request body are in and not yet read,
// and whether the client ended the body after them: reading them all, and
// then the end, does not wait for the client.
func (r *Request) Buffered() (n int, ended bool) { return r.st.body.buffered() }

// ReadHeld is Read for a relay that still holds what it read (a gRPC
// message on its way to a slow upstream): the bytes go back to the
// client's windows, but count as the connection's (for the overload
// manager, through the edge listener's address) until the relay says they
// left with Consumed.
func (r *Request) ReadHeld(p []byte) (int, error) {
	st := r.st
	n, err := st.body.read(p)
	if n > 0 {
		st.c.credit(st, int64(n))
	}
	return n, err
}

// TakeHeld is ReadHeld without a copy, where one can be saved: when the
// bytes in are a whole buffer of the body's, no more than max and filling
// at least half of it, it hands that buffer over, its bytes
// (*buf)[off:]; the caller gives it back to bufpool.Default when done
// with them. Otherwise it returns a nil buf, and the caller reads with
// ReadHeld. Like Read, it waits for bytes, and returns the body's end or
// why it ended as err.
func (r *Request) TakeHeld(max int) (buf *[]byte, off int, err error) {
	st := r.st
	buf, off, err = st.body.take(max)
	if buf != nil {
		st.c.credit(st, int64(len(*buf)-off))
	}
	return buf, off, err
}

// Consumed reports n bytes read with ReadHeld as no longer held.
func (r *Request) Consumed(n int) { r.st.c.consumed(n) }

// Hold has the stream's next write queued but not sent: it leaves with
// the connection's next write, of this stream or another. The caller must
// write again at once (it has what follows in hand: a message, the
// trailers), so that a response in several parts costs one system call.
// Whatever is held when the relay returns is sent then.
func (r *Request) Hold() {
	r.st.c.w.mu.Lock()
	r.st.holdNext = true
	r.st.c.w.mu.Unlock()
}

// WriteHead sends the response's status and fields (any case: they are
// sent in lower case; connection-specific ones and invalid values are
// dropped, a date is added if there is none), then body if any; end ends
// the stream.
func (r *Request) WriteHead(status int, fields []hpack.HeaderField, body []byte, end bool) error {
	return r.st.c.writeBlock(r.st, status, func(enc *hpackmemo.Encoder) bool { return encodeFields(enc, fields) }, end, one(body), false)
}

// WriteHeadParts is WriteHead with a body in parts (which it consumes),
// sent in frames that span them, without putting them together first.
func (r *Request) WriteHeadParts(status int, fields []hpack.HeaderField, body [][]byte, end bool) error {
	return r.st.c.writeBlock(r.st, status, func(enc *hpackmemo.Encoder) bool { return encodeFields(enc, fields) }, end, body, false)
}

// WriteData sends p; end ends the stream.
func (r *Request) WriteData(p []byte, end bool) error { return r.st.c.writeData(r.st, p, end) }

// WriteDataParts is WriteData of parts (which it consumes).
func (r *Request) WriteDataParts(parts [][]byte, end bool) error {
	return r.st.c.writeDataParts(r.st, parts, end)
}

// WriteTrailers sends trailer fields and ends the stream.
func (r *Request) WriteTrailers(fields []hpack.HeaderField) error {
	return r.st.c.writeBlock(r.st, 0, func(enc *hpackmemo.Encoder) bool { return encodeFields(enc, fields) }, true, nil, true)
}

// encodeFields encodes fields as writeHeaders encodes a header map; it
// reports whether one was a date.
func encodeFields(enc *hpackmemo.Encoder, fields []hpack.HeaderField) (hasDate bool) {
	for _, f := range fields {
		name := f.Name
		if !isLower(name) {
			name = lower(http.CanonicalHeaderKey(name))
		}
		switch name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			continue // connection-specific: not in HTTP/2
		case "date":
			hasDate = true
		}
		if httpguts.ValidHeaderFieldValue(f.Value) {
			enc.WriteField(hpack.HeaderField{Name: name, Value: f.Value})
		}
	}
	return hasDate
}

func isLower(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return false
		}
	}
	return true
}

// relayable makes the Request of a bodiless request's HEADERS when it is
// plainly well formed (what newRequest would take without an error), so
// that a relay may serve it; anything else takes newRequest's path and
// its stream errors.
func relayable(f *http2.MetaHeadersFrame, r *Request) bool {
	if !f.StreamEnded() || f.Truncated {
		return false
	}
	if !pseudo(f, r) {
		return false
	}
	if r.Method == "" || r.Method == "CONNECT" || r.Scheme == "" || !plainPath(r.Path) {
		return false
	}
	r.Fields = f.RegularFields()
	for _, hf := range r.Fields {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade", "te", "content-length", "expect":
			return false
		case "host":
			if r.Authority == "" {
				r.Authority = hf.Value
			}
		}
	}
	return true
}

// grpcRequest makes the Request of a gRPC call's HEADERS when it is
// plainly well formed: POST, a gRPC content type, an origin-form path, no
// Connection field, a content-length (h2load sends one) that is one
// number and, on a request that ended, zero; the body is then held to it.
// Anything else takes newRequest's path. As gRPC's server (its
// operateHeaders, after gRFC A41), it takes the other connection-specific
// fields and any te as metadata: the proxy drops them on the way up, and
// clients that send them (grpc-go passes them through as metadata) are
// served as on gRPC's own server.
func grpcRequest(f *http2.MetaHeadersFrame, r *Request) bool {
	if f.Truncated {
		return false
	}
	if !pseudo(f, r) {
		return false
	}
	if r.Method != "POST" || r.Scheme == "" || !plainPath(r.Path) {
		return false
	}
	r.Fields = f.RegularFields()
	isGRPC := false
	for _, hf := range r.Fields {
		switch hf.Name {
		case "connection":
			return false
		case "content-length":
			n, err := strconv.ParseUint(hf.Value, 10, 63)
			if err != nil || r.st.declared >= 0 && r.st.declared != int64(n) || f.StreamEnded() && n != 0 {
				return false
			}
			r.st.declared = int64(n)
		case "content-type":
			v := hf.Value
			isGRPC = strings.HasPrefix(v, "application/grpc") && (len(v) == len("application/grpc") || v[len("application/grpc")] == '+' || v[len("application/grpc")] == ';')
		case "host":
			if r.Authority == "" {
				r.Authority = hf.Value
			}
		}
	}
	return isGRPC
}

// pseudo takes a request's pseudo-header fields into r; false for one it
// does not know.
func pseudo(f *http2.MetaHeadersFrame, r *Request) bool {
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			r.Method = hf.Value
		case ":scheme":
			r.Scheme = hf.Value
		case ":authority":
			r.Authority = hf.Value
		case ":path":
			r.Path = hf.Value
		default:
			return false
		}
	}
	return true
}

// plainPath: an origin-form target of visible ASCII whose escapes are
// well formed, which url.ParseRequestURI takes (newRequest's check).
func plainPath(p string) bool {
	if p == "" || p[0] != '/' || strings.HasPrefix(p, "//") {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c <= ' ' || c >= 0x7f || c == '#':
			return false
		case c == '%':
			if i+2 >= len(p) || !ishex(p[i+1]) || !ishex(p[i+2]) {
				return false
			}
		}
	}
	return true
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// relay serves a bodiless request with the relay, or with the handler
// when the relay declines it.
func (st *stream) relay(relay func(*Request) bool, f *http2.MetaHeadersFrame) {
	c := st.c
	served := func() (ok bool) {
		defer func() {
			if p := recover(); p != nil {
				if p != http.ErrAbortHandler {
					c.s.opts.Log.Error("http2 relay panicked", "peer", st.req.RemoteAddr(), "path", st.req.Path, "panic", p)
				}
				c.streamError(st.id, errInternal)
				ok = true
			}
		}()
		return relay(&st.req)
	}()
	if !served {
		req, code := c.newRequest(st, f)
		if code != ErrCodeNo {
			c.streamError(st.id, code)
			c.streamDone(st)
			return
		}
		st.serve(c.s.handler, req)
		return
	}
	// A relay that could not end its response (its upstream failed
	// midway) leaves the stream to be reset: the client must not take
	// a cut body for a whole one. What it held (Hold) goes now.
	c.w.mu.Lock()
	ended := st.endSent || st.reset.Load()
	st.holdNext = false
	c.w.flushLocked()
	if !ended {
		c.streamError(st.id, errInternal)
	}
	c.streamDone(st)
	if h := c.s.testHookStreamFinished; h != nil {
		h()
	}
}
