// Package sniff tells which server a new client connection belongs to, so
// that one listener serves gRPC, HTTP/1.1 and REST over HTTP/2 as Istio's
// ingress gateway does on its HTTP and HTTPS ports.
//
// TLS connections are told apart by ALPN (h2 or http/1.1). Plaintext
// connections by their first bytes: the HTTP/2 connection preface (RFC
// 9113 section 3.4, prior knowledge) or anything else, which the HTTP/1.1
// server answers. An HTTP/2 connection goes to gRPC's server when its first
// request is gRPC (content-type application/grpc...), to the HTTP/2 server
// of the HTTP front otherwise: gRPC's own server is the fastest way to
// serve gRPC, but it answers every other request 415, so a connection that
// starts with REST is given to the HTTP front's server, which serves gRPC
// too (grpcfront).
//
// Deciding on the first request means reading it before either server has
// spoken, and clients wait for the server's side of the handshake before
// they send it (gRPC for the server's SETTINGS, h2spec for the
// acknowledgement of its own). So the sniffer speaks first: it sends the
// server preface, a SETTINGS frame with the values both servers advertise
// (Options.Settings), and acknowledges the client's SETTINGS. The chosen
// server's own SETTINGS follows (the same values again); its
// acknowledgement of the client's SETTINGS is removed from what it writes,
// since the client has had one, and the client's acknowledgement of the
// sniffer's SETTINGS is removed from what the HTTP server reads, since
// that server counts the acknowledgements of what it sent (gRPC's server
// ignores them).
package sniff

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/envgate/envgate/gateway/internal/tlsbatch"
)

// Server is where a connection goes.
type Server int

const (
	// GRPC is gRPC's server: HTTP/2 whose first request is gRPC, or that
	// sent a frame no request starts with (PING, DATA, RST_STREAM...) or
	// broke the protocol first, which gRPC's server answers as before.
	GRPC Server = iota
	// HTTP is net/http's server: the HTTP/1.x connections the HTTP/1.1
	// fast path hands over (Mux.Handoff).
	HTTP
	// HTTP1 is the HTTP/1.1 fast path: HTTP/1.x (plaintext that does not
	// start with the HTTP/2 preface; TLS without ALPN h2).
	HTTP1
	// HTTP2 is the HTTP server for HTTP/2: HTTP/2 whose first request is
	// not gRPC, and HTTP/2 that sent no request in time.
	HTTP2
)

func (s Server) String() string {
	switch s {
	case GRPC:
		return "grpc"
	case HTTP1:
		return "http1"
	case HTTP2:
		return "http2"
	}
	return "http"
}

// Preface is the HTTP/2 client connection preface.
const Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// MaxSniff bounds what is read before deciding: the preface, the client's
// SETTINGS and WINDOW_UPDATE, and the first request's header block. A
// header block beyond it goes to gRPC's server, which enforces the header
// list limit and answers.
const MaxSniff = 64 << 10

// frame types and flags (RFC 9113 section 6).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	framePriority     = 0x2
	frameSettings     = 0x4
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	frameHeaderLen = 9
	maxFrameSize   = 16384 // the client may not send more before our SETTINGS says so
	initialWindow  = 65535
)

// settingsAck acknowledges a SETTINGS frame.
var settingsAck = []byte{0, 0, 0, frameSettings, flagAck, 0, 0, 0, 0}

// Setting is one HTTP/2 setting (RFC 9113 section 6.5.1).
type Setting struct {
	ID  uint16
	Val uint32
}

// settingsFrame encodes a SETTINGS frame.
func settingsFrame(ss []Setting) []byte {
	n := 6 * len(ss)
	b := make([]byte, 0, frameHeaderLen+n)
	b = append(b, byte(n>>16), byte(n>>8), byte(n), frameSettings, 0, 0, 0, 0, 0)
	for _, st := range ss {
		b = append(b, byte(st.ID>>8), byte(st.ID), byte(st.Val>>24), byte(st.Val>>16), byte(st.Val>>8), byte(st.Val))
	}
	return b
}

// Options say how to sniff one listener's connections.
type Options struct {
	// TLS, when set, terminates TLS first (its NextProtos should offer h2
	// and http/1.1).
	TLS *tls.Config
	// Timeout bounds the TLS handshake and the connection preface.
	Timeout time.Duration
	// FirstRequest bounds the wait for an HTTP/2 connection's first
	// request: one that sends none by then goes to the HTTP server, which
	// serves whatever comes later, gRPC included. Meanwhile the sniffer
	// acknowledges the client's SETTINGS and takes its WINDOW_UPDATE and
	// PRIORITY frames; any other frame decides at once (Mux.Close ends
	// the wait).
	FirstRequest time.Duration
	// Settings are what the sniffer's SETTINGS frame says: the values
	// both servers advertise in theirs, so that the client's first
	// requests keep within what either will enforce.
	Settings []Setting
	// ConnWindow, when above the initial 65535, is the connection
	// flow-control window both servers grant at once with a
	// WINDOW_UPDATE; the sniffer grants it instead.
	ConnWindow uint32
	// SharedHTTP2 sends every HTTP/2 connection to the HTTP server, so
	// that REST may follow gRPC on any connection (a load balancer that
	// mixes both on its connections): the gateway's default. Off, the
	// first request's content-type decides.
	SharedHTTP2 bool
}

// Conn is a sniffed connection: what was read to decide is read again
// first.
type Conn struct {
	net.Conn
	pending []byte
	state   *tls.ConnectionState
	// ack removes the client's acknowledgement of the sniffer's SETTINGS
	// from what the HTTP server reads (done: nothing to remove).
	ack ackFilter
	// out removes from what the server writes what the sniffer has
	// already said for it; nil once there is nothing left to remove.
	out  *writeFilter
	wbuf []byte // what out passes, reused
	// batch is the connection under TLS, which gathers the records of
	// a WriteBatched; nil for plaintext.
	batch *tlsbatch.Conn
	// later counts, on the HTTP server's connections, the client's
	// SETTINGS read after sniffing (nil elsewhere); scan is where the
	// count is in the frames read.
	later *laterSettings
	scan  frameScan
	// drain makes the first read take what the socket has beside what was
	// sniffed: a server that finds a protocol error in the sniffed bytes
	// closes the connection, and with the client's later bytes unread the
	// close would be a reset that loses its GOAWAY, as it is not when the
	// server reads the socket itself.
	drain bool
}

// Write passes what the server writes, without what the sniffer already
// said for it.
func (c *Conn) Write(p []byte) (int, error) {
	if c.out == nil {
		return c.Conn.Write(p)
	}
	if err := c.filtered(p, func(b []byte) error { _, err := c.Conn.Write(b); return err }); err != nil {
		return 0, err
	}
	return len(p), nil
}

// filtered writes p with write, without what the sniffer already said
// for it (out, not nil); the buffer goes once nothing is left to remove.
func (c *Conn) filtered(p []byte, write func([]byte) error) error {
	c.wbuf = c.out.filter(c.wbuf[:0], p)
	if c.out.done() {
		c.out = nil
	}
	err := write(c.wbuf)
	if c.out == nil {
		c.wbuf = nil
	}
	return err
}

// WriteBatched is Write on a TLS connection with the records of p written
// in as few system calls as the socket takes them (tlsbatch), rearm
// setting the deadline before each; nil for plaintext, which has
// WriteBuffers.
func (c *Conn) WriteBatched() func(p []byte, rearm func()) error {
	if c.batch == nil {
		return nil
	}
	return c.writeBatched
}

func (c *Conn) writeBatched(p []byte, rearm func()) error {
	write := func(b []byte) error { return c.batch.WriteThrough(c.Conn, b, rearm) }
	if c.out == nil {
		return write(p)
	}
	return c.filtered(p, write)
}

// WriteBuffers is Write of several buffers, in one system call when the
// connection under can (edge's over TCP, or TCP itself); it consumes v.
func (c *Conn) WriteBuffers(v *net.Buffers) (int64, error) {
	if c.out != nil {
		return v.WriteTo(writeOnly{c}) // one at a time, through the filter
	}
	if vw, ok := c.Conn.(interface {
		WriteBuffers(*net.Buffers) (int64, error)
	}); ok {
		return vw.WriteBuffers(v)
	}
	return v.WriteTo(c.Conn)
}

// writeOnly hides every method of a connection but Write.
type writeOnly struct{ w io.Writer }

func (w writeOnly) Write(p []byte) (int, error) { return w.w.Write(p) }

// TLS is the connection's TLS state, nil for plaintext.
func (c *Conn) TLS() *tls.ConnectionState { return c.state }

// NetConn is the connection under TLS and sniffing.
func (c *Conn) NetConn() net.Conn { return c.Conn }

func (c *Conn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
			if c.drain && n < len(p) {
				c.drain = false
				_ = c.Conn.SetReadDeadline(time.Now().Add(drainWait))
				m, _ := c.Conn.Read(p[n:])
				_ = c.Conn.SetReadDeadline(time.Time{})
				n += m
			}
		}
		return n, nil
	}
	if c.ack.done {
		n, err := c.Conn.Read(p)
		if c.later != nil && !c.later.off.Load() {
			c.scan.count(p[:n], c.later)
		}
		return n, err
	}
	// Until the acknowledgement is found, reads go through the filter;
	// what it passes is returned from pending.
	buf := make([]byte, len(p))
	for len(c.pending) == 0 {
		n, err := c.Conn.Read(buf)
		c.pending = c.ack.filter(c.pending, buf[:n])
		if c.later != nil && !c.later.off.Load() {
			c.scan.count(c.pending, c.later)
		}
		if err != nil && len(c.pending) == 0 {
			return 0, err
		}
	}
	return c.Read(p)
}

// laterSettings lets the HTTP server's write filter tell its
// acknowledgement of the SETTINGS the sniffer merged (and acknowledged
// already: removed) from one for SETTINGS the client sent after sniffing
// (passed). Go's HTTP/2 server writes one acknowledgement for SETTINGS
// frames it reads before it can write one (serverConn.processSettings
// sets needToSendSettingsAck, a bool), so when the client's next SETTINGS
// is read before the merged frame's acknowledgement went out, the one
// acknowledgement covers both, and it must reach the client (h2spec 6.9.2
// waits for it).
type laterSettings struct {
	n   atomic.Int32 // SETTINGS read after sniffing, not yet matched by an acknowledgement that passed
	off atomic.Bool  // the filter removes no more acknowledgements: counting stops
}

// frameScan counts SETTINGS frames (not acknowledgements) in a stream of
// HTTP/2 frames read in arbitrary pieces.
type frameScan struct {
	hdr  [frameHeaderLen]byte
	hn   int
	skip int
}

func (s *frameScan) count(b []byte, later *laterSettings) {
	for len(b) > 0 {
		if s.skip > 0 {
			n := min(s.skip, len(b))
			b, s.skip = b[n:], s.skip-n
			continue
		}
		n := copy(s.hdr[s.hn:], b)
		s.hn += n
		b = b[n:]
		if s.hn < frameHeaderLen {
			return
		}
		s.hn = 0
		if s.hdr[3] == frameSettings && s.hdr[4]&flagAck == 0 {
			later.n.Add(1)
		}
		s.skip = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
	}
}

// drainWait bounds the wait for more bytes on a connection that broke the
// protocol while sniffed.
const drainWait = 20 * time.Millisecond

// ErrACME is returned for a TLS-ALPN-01 validation connection, which ends
// with its handshake.
var ErrACME = errors.New("sniff: ACME TLS-ALPN-01 validation connection")

// Classify decides where nc goes. On error nc is not closed.
func Classify(nc net.Conn, o Options) (*Conn, Server, error) {
	if o.Timeout > 0 {
		_ = nc.SetDeadline(time.Now().Add(o.Timeout))
		defer nc.SetDeadline(time.Time{})
	}
	c := &Conn{Conn: nc, ack: ackFilter{done: true}}
	if o.TLS != nil {
		c.batch = tlsbatch.New(nc)
		tc := tls.Server(c.batch, o.TLS)
		ctx, cancel := context.WithTimeout(context.Background(), max(o.Timeout, time.Second))
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			return nil, 0, fmt.Errorf("tls handshake: %w", err)
		}
		st := tc.ConnectionState()
		c.Conn, c.state = tc, &st
		switch st.NegotiatedProtocol {
		case "h2":
			return c.http2(o)
		case "acme-tls/1":
			return nil, 0, ErrACME
		}
		return c, HTTP1, nil // http/1.1, or no ALPN: HTTP/1.1 (RFC 7301)
	}
	// Plaintext: the preface, or HTTP/1.x from its first differing byte.
	buf := make([]byte, len(Preface))
	n := 0
	for n < len(Preface) {
		m, err := c.Conn.Read(buf[n:])
		n += m
		if !strings.HasPrefix(Preface, string(buf[:n])) {
			c.pending = buf[:n]
			return c, HTTP1, nil
		}
		if err != nil {
			if n > 0 && isTimeout(err) {
				c.pending = buf[:n]
				return c, GRPC, nil // a preface in pieces: gRPC's server times out as it always did
			}
			return nil, 0, err
		}
	}
	c.pending = buf
	return c.http2(o)
}

// validSettings reports whether every value of a SETTINGS payload is one
// a server accepts (RFC 9113 section 6.5.2): a connection that sends
// another is given at once to gRPC's server, which answers it.
func validSettings(p []byte) bool {
	for ; len(p) >= 6; p = p[6:] {
		v := uint32(p[2])<<24 | uint32(p[3])<<16 | uint32(p[4])<<8 | uint32(p[5])
		switch uint16(p[0])<<8 | uint16(p[1]) {
		case 0x2: // SETTINGS_ENABLE_PUSH
			if v > 1 {
				return false
			}
		case 0x4: // SETTINGS_INITIAL_WINDOW_SIZE
			if v > 1<<31-1 {
				return false
			}
		case 0x5: // SETTINGS_MAX_FRAME_SIZE
			if v < 1<<14 || v > 1<<24-1 {
				return false
			}
		}
	}
	return true
}

// streamID is the stream identifier in a frame header.
func streamID(h []byte) uint32 {
	return uint32(h[5]&0x7f)<<24 | uint32(h[6])<<16 | uint32(h[7])<<8 | uint32(h[8])
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// http2 reads the start of an HTTP/2 connection up to its first request's
// content-type.
func (c *Conn) http2(o Options) (*Conn, Server, error) {
	if o.SharedHTTP2 {
		return c, HTTP2, nil
	}
	preface := settingsFrame(o.Settings)
	var windowDelta uint32
	if o.ConnWindow > initialWindow {
		windowDelta = o.ConnWindow - initialWindow
		preface = append(preface, 0, 0, 4, frameWindowUpdate, 0, 0, 0, 0, 0,
			byte(windowDelta>>24), byte(windowDelta>>16), byte(windowDelta>>8), byte(windowDelta))
	}
	if _, err := c.Conn.Write(preface); err != nil {
		return nil, 0, err
	}
	// Everything read is kept to be read again, but for the client's
	// acknowledgement of the sniffer's SETTINGS, which the HTTP server
	// must not see.
	r := &recorder{r: c.Conn, buf: c.pending, out: &writeFilter{interim: o.Settings, window: windowDelta}}
	c.pending = nil
	if len(r.buf) == 0 {
		if _, err := r.next(len(Preface)); err != nil {
			return c.undecided(r, false, err)
		}
	}
	if string(r.buf[:len(Preface)]) != Preface {
		return c.grpc(r)
	}
	if o.FirstRequest > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(o.FirstRequest))
	}
	var (
		dec      = hpack.NewDecoder(4096, nil)
		window   = int64(initialWindow) // the servers' send window on the connection
		grpc     bool
		decided  bool
		inHeader bool // a HEADERS frame without END_HEADERS came
		acked    bool // the client acknowledged the sniffer's SETTINGS
		out      = r.out
	)
	dec.SetMaxStringLength(MaxSniff)
	dec.SetEmitFunc(func(f hpack.HeaderField) {
		if f.Name == "content-type" && !decided {
			decided, grpc = true, IsGRPC(f.Value)
		}
	})
	for {
		start := len(r.buf)
		h, err := r.next(frameHeaderLen)
		if err != nil {
			return c.undecided(r, acked, err)
		}
		length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
		typ, flags := h[3], h[4]
		if length > maxFrameSize || len(r.buf)+length > MaxSniff {
			return c.grpc(r)
		}
		payload, err := r.next(length)
		if err != nil {
			return c.undecided(r, acked, err)
		}
		if inHeader && typ != frameContinuation {
			return c.grpc(r) // a protocol error: gRPC's server says so
		}
		switch typ {
		case frameSettings:
			if h[5]|h[6]|h[7]|h[8] != 0 || flags&flagAck != 0 && length != 0 || length%6 != 0 || !validSettings(payload) {
				return c.grpc(r) // malformed (RFC 9113 sections 6.5, 6.5.2): the server says so
			}
			if flags&flagAck != 0 && !acked {
				acked = true
				r.buf = r.buf[:start] // the acknowledgement of the sniffer's SETTINGS
			} else if flags&flagAck == 0 {
				// The client's SETTINGS are acknowledged now, as the
				// server will when it reads them (before any frame
				// after them: no stream is open yet, nothing was sent
				// under the old values), and the server's
				// acknowledgements are removed (for the HTTP server,
				// which is given them merged, its one: httpServer). A
				// client may wait for the acknowledgement before its
				// first request (h2spec 6.9.2 does), which would
				// otherwise come only once the sniffer gave up waiting
				// for that request (Options.FirstRequest).
				r.settings = append(r.settings, span{start, len(r.buf)})
				if o.Timeout > 0 {
					// The wait for the first request may outlast the
					// deadline set for the handshake.
					_ = c.Conn.SetWriteDeadline(time.Now().Add(o.Timeout))
				}
				if _, err := c.Conn.Write(settingsAck); err != nil {
					return nil, 0, err
				}
				out.acks++
			}
			continue
		case frameWindowUpdate:
			// The connection's window may grow while the client waits
			// to send its first request. One the servers must answer
			// with an error (a stream's before any stream, an increment
			// of 0, a window past 2^31-1, a wrong length) goes to gRPC's
			// server, which does.
			if length != 4 || streamID(h) != 0 {
				return c.grpc(r)
			}
			inc := uint32(payload[0]&0x7f)<<24 | uint32(payload[1])<<16 | uint32(payload[2])<<8 | uint32(payload[3])
			if window += int64(inc); inc == 0 || window > 1<<31-1 {
				return c.grpc(r)
			}
			continue
		case framePriority:
			// Priorities of streams to come (RFC 7540 clients send
			// them); a malformed one goes to gRPC's server.
			if length != 5 || streamID(h) == 0 {
				return c.grpc(r)
			}
			if dep := uint32(payload[0]&0x7f)<<24 | uint32(payload[1])<<16 | uint32(payload[2])<<8 | uint32(payload[3]); dep == streamID(h) {
				return c.grpc(r)
			}
			continue
		case frameHeaders:
			block, ok := headerBlock(payload, flags)
			if !ok {
				return c.grpc(r)
			}
			if _, err := dec.Write(block); err != nil {
				return c.grpc(r)
			}
			inHeader = flags&flagEndHeaders == 0
		case frameContinuation:
			if !inHeader {
				return c.grpc(r)
			}
			if _, err := dec.Write(payload); err != nil {
				return c.grpc(r)
			}
			inHeader = flags&flagEndHeaders == 0
		default:
			// PING, DATA, RST_STREAM, GOAWAY... before any request:
			// gRPC's server answers them as it always did.
			return c.grpc(r)
		}
		if decided || !inHeader {
			// Decided, or the block ended without a content-type: not gRPC.
			c.pending = r.buf
			if grpc {
				c.out = out
				return c, GRPC, nil
			}
			return c.httpServer(r, acked)
		}
	}
}

// grpc hands the connection to gRPC's server with what was read: a
// connection that has not sent a whole first request, or has broken the
// protocol, which gRPC's server answers as it always did.
func (c *Conn) grpc(r *recorder) (*Conn, Server, error) {
	c.pending = r.buf
	c.out = r.out
	c.drain = true
	return c, GRPC, nil
}

// undecided ends sniffing on a read error: a connection that has sent no
// request by the deadline goes to the HTTP server, which serves whatever
// comes later (gRPC too); anything else ends it.
func (c *Conn) undecided(r *recorder, acked bool, err error) (*Conn, Server, error) {
	if isTimeout(err) {
		return c.httpServer(r, acked)
	}
	return nil, 0, err
}

// httpServer hands the connection to the HTTP server. That server counts
// the acknowledgements of its SETTINGS: the client's acknowledgement of
// the sniffer's is removed, and the server's own SETTINGS are dropped as
// gRPC's are when they are the sniffer's (it then never sees them
// acknowledged, which only makes it lenient with streams over its limit:
// REFUSED_STREAM, not PROTOCOL_ERROR), or go through to be acknowledged.
// It also acknowledges SETTINGS read together once, so the client's
// SETTINGS frames read so far are given to it as one (each setting's last
// value: no stream is open yet, so the values in between had no effect);
// the sniffer acknowledged each as it read it, and the one acknowledgement
// the server writes for them is removed.
func (c *Conn) httpServer(r *recorder, acked bool) (*Conn, Server, error) {
	if len(r.settings) > 1 {
		if err := r.mergeSettings(); err != nil {
			return nil, 0, err
		}
		// The sniffer acknowledged each; the server acknowledges the
		// merged frame once, and that one is removed.
		r.out.acks = 1
	}
	c.pending, c.out = r.buf, r.out
	c.ack.done = acked
	if r.out.acks > 0 {
		c.later = new(laterSettings)
		r.out.later = c.later
	}
	return c, HTTP2, nil
}

// IsGRPC reports whether a content-type is gRPC's (gRPC over HTTP/2:
// "application/grpc" followed by nothing, "+" or ";").
func IsGRPC(ct string) bool {
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// headerBlock is the header block fragment of a HEADERS frame's payload.
func headerBlock(p []byte, flags byte) ([]byte, bool) {
	if flags&flagPadded != 0 {
		if len(p) < 1 {
			return nil, false
		}
		pad := int(p[0])
		p = p[1:]
		if pad > len(p) {
			return nil, false
		}
		p = p[:len(p)-pad]
	}
	if flags&flagPriority != 0 {
		if len(p) < 5 {
			return nil, false
		}
		p = p[5:]
	}
	return p, true
}

// recorder reads exactly what is asked and keeps all of it.
type recorder struct {
	r   io.Reader
	buf []byte
	out *writeFilter // what the server's writes are to lose
	// settings are where the client's SETTINGS frames are in buf.
	settings []span
}

type span struct{ start, end int }

// mergeSettings replaces the client's SETTINGS frames in buf by one, at the
// first's place, with each setting's last value in the order first set.
func (r *recorder) mergeSettings() error {
	var merged []Setting
	for _, sp := range r.settings {
		p := r.buf[sp.start+frameHeaderLen : sp.end]
		for i := 0; i+6 <= len(p); i += 6 {
			st := Setting{ID: uint16(p[i])<<8 | uint16(p[i+1]), Val: uint32(p[i+2])<<24 | uint32(p[i+3])<<16 | uint32(p[i+4])<<8 | uint32(p[i+5])}
			found := false
			for j := range merged {
				if merged[j].ID == st.ID {
					merged[j].Val, found = st.Val, true
				}
			}
			if !found {
				merged = append(merged, st)
			}
		}
	}
	out := make([]byte, 0, len(r.buf))
	last := 0
	for i, sp := range r.settings {
		out = append(out, r.buf[last:sp.start]...)
		if i == 0 {
			out = append(out, settingsFrame(merged)...)
		}
		last = sp.end
	}
	r.buf = append(out, r.buf[last:]...)
	return nil
}

func (r *recorder) next(n int) ([]byte, error) {
	start := len(r.buf)
	r.buf = append(r.buf, make([]byte, n)...)
	if _, err := io.ReadFull(r.r, r.buf[start:]); err != nil {
		r.buf = r.buf[:start]
		return nil, err
	}
	return r.buf[start:], nil
}

// ackFilter removes the first SETTINGS acknowledgement from a stream of
// HTTP/2 frames read in arbitrary pieces.
type ackFilter struct {
	skip int                  // payload bytes of the current frame still to pass
	hdr  [frameHeaderLen]byte // a frame header read in part
	hn   int
	done bool
}

// filter appends b to out without the acknowledgement. A frame header
// split across reads is held until it is whole.
func (f *ackFilter) filter(out, b []byte) []byte {
	for len(b) > 0 {
		switch {
		case f.done:
			return append(out, b...)
		case f.skip > 0:
			n := min(f.skip, len(b))
			out = append(out, b[:n]...)
			b = b[n:]
			f.skip -= n
			continue
		}
		n := copy(f.hdr[f.hn:], b)
		f.hn += n
		b = b[n:]
		if f.hn < frameHeaderLen {
			break
		}
		f.hn = 0
		if bytes.Equal(f.hdr[:], settingsAck) {
			f.done = true
			continue
		}
		out = append(out, f.hdr[:]...)
		f.skip = int(f.hdr[0])<<16 | int(f.hdr[1])<<8 | int(f.hdr[2])
	}
	return out
}

// writeFilter removes from what a server writes what the sniffer has said
// for it: its acknowledgements of the client's SETTINGS that the sniffer
// acknowledged, its own first SETTINGS when they are what the sniffer sent
// (gRPC's are: the client would otherwise see the same SETTINGS twice,
// which some clients, h2spec among them, do not expect before the
// acknowledgement they wait for), and its first connection WINDOW_UPDATE
// when it grants what the sniffer granted. A frame header split across
// writes, and a small frame looked at, are held until whole.
type writeFilter struct {
	interim      []Setting
	acks         int    // acknowledgements to remove
	settingsDone bool   // no SETTINGS to remove
	window       uint32 // the WINDOW_UPDATE increment to remove (0: none)
	held         []byte
	skip         int
	// later, on the HTTP server's path, counts the client's SETTINGS
	// after sniffing: while any is unmatched, an acknowledgement may be
	// theirs and passes.
	later *laterSettings
}

func (f *writeFilter) done() bool { return f.acks == 0 && f.settingsDone && f.window == 0 }

// maxSettingsPayload bounds the SETTINGS frame held: a server's are a few
// settings.
const maxSettingsPayload = 256

func (f *writeFilter) filter(out, b []byte) []byte {
	for len(b) > 0 {
		if f.skip > 0 {
			n := min(f.skip, len(b))
			out = append(out, b[:n]...)
			b = b[n:]
			f.skip -= n
			continue
		}
		if f.done() {
			return append(out, b...)
		}
		if len(f.held) < frameHeaderLen {
			n := min(frameHeaderLen-len(f.held), len(b))
			f.held = append(f.held, b[:n]...)
			b = b[n:]
			if len(f.held) < frameHeaderLen {
				break
			}
		}
		h := f.held
		length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
		typ, stream := h[3], h[5]|h[6]|h[7]|h[8]
		if typ != frameSettings && !(typ == frameWindowUpdate && stream == 0) || length > maxSettingsPayload {
			out = append(out, h...)
			f.held, f.skip = f.held[:0], length
			continue
		}
		n := min(frameHeaderLen+length-len(f.held), len(b))
		f.held = append(f.held, b[:n]...)
		b = b[n:]
		if len(f.held) < frameHeaderLen+length {
			break
		}
		payload := f.held[frameHeaderLen:]
		switch {
		case typ == frameWindowUpdate:
			if f.window != 0 && length == 4 && uint32(payload[0]&0x7f)<<24|uint32(payload[1])<<16|uint32(payload[2])<<8|uint32(payload[3]) == f.window {
				f.window = 0
			} else {
				f.window = 0 // not what the sniffer granted: it goes through
				out = append(out, f.held...)
			}
		case h[4]&flagAck != 0 && f.acks > 0 && f.later != nil && f.later.n.Load() > 0:
			f.later.n.Add(-1) // it acknowledges later SETTINGS too
			out = append(out, f.held...)
		case h[4]&flagAck != 0 && f.acks > 0:
			f.acks--
			if f.acks == 0 && f.later != nil {
				f.later.off.Store(true)
			}
		case h[4]&flagAck == 0 && !f.settingsDone:
			f.settingsDone = true
			if !sameSettings(payload, f.interim) {
				out = append(out, f.held...)
			}
		default:
			out = append(out, f.held...)
		}
		f.held = f.held[:0]
	}
	return out
}

// sameSettings reports whether a SETTINGS payload sets exactly ss.
func sameSettings(payload []byte, ss []Setting) bool {
	if len(payload) != 6*len(ss) {
		return false
	}
	for i := 0; i < len(payload); i += 6 {
		id := uint16(payload[i])<<8 | uint16(payload[i+1])
		val := uint32(payload[i+2])<<24 | uint32(payload[i+3])<<16 | uint32(payload[i+4])<<8 | uint32(payload[i+5])
		found := false
		for _, s := range ss {
			if s.ID == id && s.Val == val {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
