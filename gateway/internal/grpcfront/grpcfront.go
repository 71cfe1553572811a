// Package grpcfront serves the gRPC calls that arrive on envgate's own
// HTTP/2 server (h2front) to a grpc.StreamHandler, as grpc-go's server
// transport hands calls to its unknown-service handler: the same metadata,
// deadline, peer and method in the stream's context, the same limits and
// status trailers. It replaces grpc.Server.ServeHTTP on those connections,
// which built an http.Request and header maps for every call and passed
// every message between goroutines over channels (2-3x the CPU per call of
// gRPC's own server, docs/bench.md).
//
// Compressed requests (a grpc-encoding other than identity) are declined
// and take ServeHTTP's path, where the gateway's pass-through compression
// is set up. Compressed responses pass through as they are, in an encoding
// the client accepts (PassCompressed).
package grpcfront

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/envgate/envgate/gateway/internal/bufpool"
	"github.com/envgate/envgate/gateway/internal/fieldmap"
	"github.com/envgate/envgate/gateway/internal/forwarded"
	"github.com/envgate/envgate/gateway/internal/grpcwire"
	"github.com/envgate/envgate/gateway/internal/h2front"
)

// Options configure a Server.
type Options struct {
	// Handler serves every call (grpc.UnknownServiceHandler's contract:
	// the method is in the stream's context).
	Handler grpc.StreamHandler
	// Codec turns messages into bytes and back (grpc.ForceServerCodecV2's).
	Codec encoding.CodecV2
	// MaxRecvMessage and MaxSendMessage bound one message's bytes
	// (grpc.MaxRecvMsgSize, grpc.MaxSendMsgSize): past them the call ends
	// with RESOURCE_EXHAUSTED.
	MaxRecvMessage, MaxSendMessage int
}

// Server serves gRPC calls from h2front requests.
type Server struct{ opts Options }

// New returns a server with opts.
func New(opts Options) *Server { return &Server{opts: opts} }

// Serve serves r (h2front.Options.GRPC): it returns false, having read and
// sent nothing, for a request it leaves to the http.Handler adapter.
func (s *Server) Serve(r *h2front.Request) bool {
	ss := &serverStream{r: r, srv: s, method: r.Path}
	md := make(metadata.MD, len(r.Fields)+1)
	// The values share one array: a slice each was an allocation each.
	vals := make([]string, 0, len(r.Fields)+1)
	var (
		timeout    time.Duration
		timeoutSet bool
		headerErr  *status.Status
		hosts      int
		contentSub string
	)
	for _, hf := range r.Fields {
		switch hf.Name {
		case "content-type":
			contentSub = subtype(hf.Value)
			vals = fieldmap.Add(md, vals, hf.Name, hf.Value)
		case "grpc-accept-encoding":
			vals = fieldmap.Add(md, vals, hf.Name, hf.Value)
			if ss.accepts != "" {
				ss.accepts += ","
			}
			ss.accepts += hf.Value
		case "grpc-encoding":
			if hf.Value != "" && hf.Value != "identity" {
				return false
			}
		case "grpc-timeout":
			var err error
			timeoutSet = true
			if timeout, err = grpcwire.DecodeTimeout(hf.Value); err != nil {
				headerErr = status.Newf(codes.Internal, "malformed grpc-timeout: %v", err)
			}
		case "host":
			hosts++
		case "grpc-message-type", "grpc-message", "grpc-status", "te":
			// Reserved: not metadata (grpc-go isReservedHeader).
		default:
			v := hf.Value
			if grpcwire.IsBin(hf.Name) {
				b, err := grpcwire.DecodeBin(v)
				if err != nil {
					headerErr = status.Newf(codes.Internal, "malformed binary metadata %q in header %q: %v", v, hf.Name, err)
					continue
				}
				v = b
			}
			vals = fieldmap.Add(md, vals, hf.Name, v)
		}
	}
	ss.contentType = contentType(contentSub)
	ss.subtype = contentSub
	// A41: one Host at most; :authority, or else Host, is the authority.
	switch {
	case hosts > 1:
		headerErr = status.Newf(codes.Internal, "num values of :authority: 1, num values of host: %d, both must only have 1 value as per HTTP/2 spec", hosts)
	case r.Authority == "":
		headerErr = status.New(codes.Internal, "no host or :authority header present")
	}
	if headerErr != nil {
		ss.abort(400, headerErr)
		return true
	}
	fieldmap.Add(md, vals, ":authority", r.Authority)
	ss.md = md

	// The call's context is the stream's own (h2front's), with the
	// deadline grpc-timeout sets, under the call's values (callContext):
	// it ends when the stream does or the deadline passes, and what
	// derives from it or watches it (the upstream call's contexts and
	// stream) registers with it through callContext's AfterFunc, where a
	// cancelCtx per call, a map of its children and their registrations
	// were 4 allocations a call. Without callContext (grpc-go's keys
	// unknown) the values are value contexts, through which
	// context.propagateCancel finds neither a cancelCtx nor an AfterFunc
	// and starts a goroutine for each context derived: the call then has
	// a cancelCtx of its own, canceled at the stream's end (OnGone).
	ctx := r.Context()
	if ctxKeys.ok {
		if timeoutSet {
			r.SetTimeout(timeout)
		}
	} else {
		var cancel context.CancelFunc
		if timeoutSet {
			ctx, cancel = context.WithTimeout(context.Background(), timeout)
		} else {
			ctx, cancel = context.WithCancel(context.Background())
		}
		gone, _ := r.Context().(interface{ OnGone(func()) bool })
		if gone != nil && !gone.OnGone(cancel) {
			cancel() // the stream is over already
		}
		defer func() {
			if gone != nil {
				gone.OnGone(nil)
			}
			cancel()
		}()
	}
	if timeoutSet && ctx.Err() != nil {
		// grpc-go aborts a call whose deadline passed already.
		ss.abort(200, status.New(codes.DeadlineExceeded, context.DeadlineExceeded.Error()))
		return true
	}
	ss.ts.ss = ss
	ss.body.r = r
	ss.ctx = ss.call.with(ctx, r.ConnValue(func() any { return peerOf(r) }).(*peer.Peer), md, &ss.ts)
	err := s.opts.Handler(nil, ss)
	ss.finish(err)
	return true
}

// peerOf is the calls' peer, made once per connection. Its address is the
// client's; on a connection the edge listener accounts (edge.Addr) it
// passes on only the reservations of response bytes (outboundAddr).
func peerOf(r *h2front.Request) *peer.Peer {
	var addr net.Addr = strAddr(r.RemoteAddr())
	if a, ok := r.Addr().(outbound); ok {
		oa := outboundAddr{Addr: r.Addr(), acct: a}
		oa.ip = forwarded.ClientIP(oa.Unwrap())
		addr = oa
	}
	p := &peer.Peer{Addr: addr}
	if st := r.TLS(); st != nil {
		p.AuthInfo = credentials.TLSInfo{State: *st, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	}
	return p
}

// outbound is what the edge listener's address (edge.Addr) keeps of the
// response bytes a connection holds and the client has not taken.
type outbound interface {
	Reserve(ctx context.Context, n int) error
	Adjust(delta int)
}

// outboundAddr is the peer address on a connection the edge listener
// accounts: the handler reserves room in the connection's outbound cap
// before it takes a large response message from its upstream (Reserve,
// Adjust), so a client that does not read holds back its upstream instead
// of filling the gateway, as on gRPC's server. The stream and byte counts
// are h2front's, kept for every request of the connection (request
// messages reported by heldReader once the handler is done with them):
// here they are no-ops, or each call would count twice.
type outboundAddr struct {
	net.Addr
	acct outbound
	ip   string // the client's, without its port
}

// ClientIP is the client's address without its port, which the proxy
// sets in x-forwarded-for: made once per connection, not per call.
func (a outboundAddr) ClientIP() string { return a.ip }

func (a outboundAddr) CallStarted()                             {}
func (a outboundAddr) StreamEnded(bool)                         {}
func (a outboundAddr) Received(int)                             {}
func (a outboundAddr) Adjust(delta int)                         { a.acct.Adjust(delta) }
func (a outboundAddr) Reserve(ctx context.Context, n int) error { return a.acct.Reserve(ctx, n) }

// Unwrap is the client's own address (the proxy's x-forwarded-for).
func (a outboundAddr) Unwrap() net.Addr {
	if u, ok := a.Addr.(interface{ Unwrap() net.Addr }); ok {
		return u.Unwrap()
	}
	return a.Addr
}

// strAddr is an address known by its string (grpc-go's ServeHTTP peer).
type strAddr string

func (a strAddr) Network() string { return "tcp" }
func (a strAddr) String() string  { return string(a) }

var _ net.Addr = strAddr("")

// serverStream is one call: grpc.ServerStream for the handler, and
// grpc.ServerTransportStream in its context. Like grpc-go's, its sending
// methods belong to the handler's goroutine and RecvMsg to one other at
// most.
type serverStream struct {
	r           *h2front.Request
	srv         *Server
	ctx         context.Context
	method      string
	contentType string // the response's: the request's subtype, as grpc-go answers
	subtype     string

	accepts string // the client's grpc-accept-encoding

	// The handler's goroutine's.
	header, trailer metadata.MD
	headerSent      bool
	sendComp        string   // the response's grpc-encoding, "" for none
	sendPfx         [5]byte  // the prefix of the message on its way out
	parts           [][]byte // its prefix and buffers, reused

	// md is the request's metadata as the call's context has it; not to
	// be changed (IncomingMetadata).
	md metadata.MD

	// RecvMsg's.
	prefix [5]byte
	body   heldReader

	ts   transportStream
	call callContext
}

// transportStream is the stream as grpc.ServerTransportStream, in the
// call's context (grpc.MethodFromServerStream, grpc.SetHeader...): its
// SetTrailer returns an error where grpc.ServerStream's does not.
type transportStream struct{ ss *serverStream }

var (
	_ grpc.ServerStream          = (*serverStream)(nil)
	_ grpc.ServerTransportStream = (*transportStream)(nil)
)

func (ss *serverStream) Context() context.Context { return ss.ctx }

// Hold has the next send (headers, a message) wait for the one after it,
// or for the status, to go out in one write with it: the handler calls it
// only when it has what follows in hand (h2front.Request.Hold).
func (ss *serverStream) Hold() { ss.r.Hold() }

func (t *transportStream) Method() string                  { return t.ss.method }
func (t *transportStream) SetHeader(md metadata.MD) error  { return t.ss.SetHeader(md) }
func (t *transportStream) SendHeader(md metadata.MD) error { return t.ss.SendHeader(md) }
func (t *transportStream) SetTrailer(md metadata.MD) error { t.ss.SetTrailer(md); return nil }

// IncomingMetadata is the request's metadata, as
// metadata.FromIncomingContext returns it but not copied: the caller must
// not change it (the proxy makes the upstream's metadata of it).
func (t *transportStream) IncomingMetadata() metadata.MD { return t.ss.md }

// PassCompressed sends the response in the encoding name, which the
// client must accept ("identity": none), before the headers go: messages
// the handler marks compressed (WireCompressed) are sent as they are,
// with the compressed flag. It is grpc.SetSendCompressor for a stream
// whose messages are not compressed by the transport.
func (t *transportStream) PassCompressed(name string) error {
	ss := t.ss
	if ss.headerSent {
		return errHeaderSent
	}
	if name == "identity" {
		ss.sendComp = ""
		return nil
	}
	for _, a := range strings.Split(ss.accepts, ",") {
		if strings.TrimSpace(a) == name {
			ss.sendComp = name
			return nil
		}
	}
	return fmt.Errorf("grpcfront: the client does not accept the encoding %q", name)
}

// RecvCompress and ContentSubtype are what grpc-go's transport stream
// tells the handler of the request's encoding (the proxy asks for them).
func (t *transportStream) RecvCompress() string   { return "" }
func (t *transportStream) ContentSubtype() string { return t.ss.subtype }

var errHeaderSent = status.Error(codes.Internal, "transport: the headers were already sent")

func (ss *serverStream) SetHeader(md metadata.MD) error {
	if ss.headerSent {
		return errHeaderSent
	}
	ss.header = metadata.Join(ss.header, md)
	return nil
}

func (ss *serverStream) SendHeader(md metadata.MD) error {
	if ss.headerSent {
		return errHeaderSent
	}
	if ss.header == nil {
		// Nothing set before (the proxy's case): md is written now and
		// not read again, so it is not copied (metadata.Join's copy
		// was allocations every call).
		ss.header = md
	} else {
		ss.header = metadata.Join(ss.header, md)
	}
	ss.headerSent = true
	err := ss.r.WriteHead(200, ss.headerFields(), nil, false)
	ss.header = nil // not the caller's map past the call
	if err != nil {
		return ss.writeFailed()
	}
	return nil
}

func (ss *serverStream) SetTrailer(md metadata.MD) {
	ss.trailer = metadata.Join(ss.trailer, md)
}

func (ss *serverStream) SendMsg(m any) error {
	data, err := ss.srv.opts.Codec.Marshal(m)
	if err != nil {
		return status.Errorf(codes.Internal, "grpc: error while marshaling: %v", err)
	}
	n := data.Len()
	if max := ss.srv.opts.MaxSendMessage; max > 0 && n > max {
		data.Free()
		return status.Errorf(codes.ResourceExhausted, "grpc: trying to send message larger than max (%d vs. %d)", n, max)
	}
	var flag byte
	if w, ok := m.(interface{ WireCompressed() bool }); ok && w.WireCompressed() {
		if ss.sendComp == "" {
			data.Free()
			return status.Error(codes.Internal, "grpcfront: a compressed message on a stream without an encoding")
		}
		flag = 1
	}
	// The prefix and the message's buffers go as they are: the writer
	// copies them into its frames once.
	ss.sendPfx = [5]byte{flag, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	parts := append(ss.parts[:0], ss.sendPfx[:])
	for _, b := range data {
		parts = append(parts, b.ReadOnlyData())
	}
	if !ss.headerSent {
		ss.headerSent = true
		err = ss.r.WriteHeadParts(200, ss.headerFields(), parts, false)
	} else {
		err = ss.r.WriteDataParts(parts, false)
	}
	clear(parts)
	ss.parts = parts[:0]
	data.Free()
	if err != nil {
		return ss.writeFailed()
	}
	return nil
}

// SendWire sends bytes of the response's messages as they are on the
// wire, prefixes included, in one write (after the headers, when they
// have not gone); they may end inside a message: a proxy forwarding what
// its upstream sent as it came. The caller holds the messages to the
// stream's limits and forwards a compressed flag only on a stream with an
// encoding (PassCompressed), as SendMsg would.
func (ss *serverStream) SendWire(parts [][]byte) error {
	var err error
	if !ss.headerSent {
		ss.headerSent = true
		err = ss.r.WriteHeadParts(200, ss.headerFields(), parts, false)
	} else {
		err = ss.r.WriteDataParts(parts, false)
	}
	if err != nil {
		return ss.writeFailed()
	}
	return nil
}

// recvChunk is the most of a request message read into one buffer.
const recvChunk = 32 << 10

// writeFailed is the error of a write the stream no longer takes: it was
// reset, or the connection ended.
func (ss *serverStream) writeFailed() error {
	if err := ss.ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Unavailable, "transport: the stream is done")
}

// heldReader reads a request's body as held (h2front ReadHeld): the
// message RecvMsg returned counts as the client connection's until the
// handler asks for the next one or the call ends, as gRPC's server counts
// a message until the proxy has forwarded it, so that requests stuck
// behind a slow upstream are the connection's for the overload manager.
type heldReader struct {
	r    *h2front.Request
	held atomic.Int64 // what RecvMsg last returned, not yet reported
	read int64        // what the message being read took so far
}

func (h *heldReader) Read(p []byte) (int, error) {
	n, err := h.r.ReadHeld(p)
	h.read += int64(n)
	return n, err
}

// release reports the message held before as consumed.
func (h *heldReader) release() {
	if n := h.held.Swap(0); n > 0 {
		h.r.Consumed(int(n))
	}
}

// RequestBuffered is how many bytes of the request are in and not yet
// received, and whether the client half-closed after them: RecvMsg then
// returns what they hold, and io.EOF, without waiting.
func (ss *serverStream) RequestBuffered() (int, bool) { return ss.r.Buffered() }

func (ss *serverStream) RecvMsg(m any) error {
	b := &ss.body
	b.release()
	b.read = 0
	defer func() {
		// What this message took is held until the next RecvMsg, or
		// until the call ends (finish).
		b.held.Add(b.read)
	}()
	if _, err := io.ReadFull(b, ss.prefix[:]); err != nil {
		if err == io.EOF {
			return io.EOF
		}
		return ss.readFailed(err)
	}
	if ss.prefix[0] != 0 {
		if ss.prefix[0] == 1 {
			return status.Error(codes.Internal, "grpc: compressed flag set with identity or empty encoding")
		}
		return status.Errorf(codes.Internal, "grpc: received unexpected payload format %d", ss.prefix[0])
	}
	n := int(binary.BigEndian.Uint32(ss.prefix[1:]))
	if max := ss.srv.opts.MaxRecvMessage; max > 0 && n > max {
		return status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, max)
	}
	// The message is read in chunks as it arrives: a length prefix alone
	// does not make the gateway hold its size (a client could declare
	// 4 MiB on each of its streams and send nothing more).
	var data mem.BufferSlice
	// Each buffer is filled by the read or given back: it need not be
	// cleared (bufpool).
	pool := bufpool.Default
	for left := n; left > 0; {
		// What is in, as it arrived, when it is a whole buffer of the
		// body's: no copy.
		if buf, off, err := b.r.TakeHeld(left); buf != nil {
			got := len(*buf) - off
			b.read += int64(got)
			left -= got
			mb := mem.NewBuffer(buf, pool)
			if off > 0 {
				var head mem.Buffer
				head, mb = mem.SplitUnsafe(mb, off)
				head.Free()
			}
			data = append(data, mb)
			continue
		} else if err != nil {
			data.Free()
			return ss.readFailed(err)
		}
		buf := pool.Get(min(left, recvChunk))
		if _, err := io.ReadFull(b, *buf); err != nil {
			pool.Put(buf)
			data.Free()
			return ss.readFailed(err)
		}
		left -= len(*buf)
		data = append(data, mem.NewBuffer(buf, pool))
	}
	err := ss.srv.opts.Codec.Unmarshal(data, m)
	data.Free()
	if err != nil {
		return status.Errorf(codes.Internal, "grpc: failed to unmarshal the received message: %v", err)
	}
	return nil
}

// readFailed is the error of a request that ended midway: cut short by
// the client (a protocol error: grpc-go's io.ErrUnexpectedEOF), or the
// stream's end.
func (ss *serverStream) readFailed(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return status.Error(codes.Internal, io.ErrUnexpectedEOF.Error())
	}
	if err := ss.ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Canceled, "transport: the stream is done")
}

// finish sends the handler's status (grpc-go's processStreamingRPC): in
// trailers, or in a trailers-only response when nothing was sent.
func (ss *serverStream) finish(appErr error) {
	ss.body.release()
	st := statusOK
	if appErr != nil {
		var ok bool
		if st, ok = status.FromError(appErr); !ok {
			st = status.FromContextError(appErr)
		}
	}
	// Nothing sent and no headers set: a trailers-only answer, its one
	// HEADERS frame with the content type.
	trailersOnly := !ss.headerSent && len(ss.header) == 0
	if !ss.headerSent && !trailersOnly && ss.r.WriteHead(200, ss.headerFields(), nil, false) != nil {
		return
	}
	ss.headerSent = true
	var fields []hpack.HeaderField
	if trailersOnly {
		fields = ss.contentTypeField()
	}
	fields = appendMD(statusFields(fields, st), ss.trailer)
	if trailersOnly {
		_ = ss.r.WriteHead(200, fields, nil, true)
		return
	}
	_ = ss.r.WriteTrailers(fields)
}

// contentTypeField starts the fields of an answer's first HEADERS frame.
func (ss *serverStream) contentTypeField() []hpack.HeaderField {
	return []hpack.HeaderField{{Name: "content-type", Value: ss.contentType}}
}

var statusOK = status.New(codes.OK, "")

// abort answers a call refused before its handler (grpc-go's
// writeEarlyAbort): the HTTP status, and the gRPC status.
func (ss *serverStream) abort(httpStatus int, st *status.Status) {
	_ = ss.r.WriteHead(httpStatus, statusFields(ss.contentTypeField(), st), nil, true)
}

// headerFields are the response headers: content type, then metadata.
func (ss *serverStream) headerFields() []hpack.HeaderField {
	fields := ss.contentTypeField()
	if ss.sendComp != "" {
		fields = append(fields, hpack.HeaderField{Name: "grpc-encoding", Value: ss.sendComp})
	}
	return appendMD(fields, ss.header)
}

// statusFields appends st's trailer fields (grpc-go's WriteStatus).
func statusFields(fields []hpack.HeaderField, st *status.Status) []hpack.HeaderField {
	fields = append(fields, hpack.HeaderField{Name: "grpc-status", Value: codeText(st.Code())})
	if msg := st.Message(); msg != "" {
		fields = append(fields, hpack.HeaderField{Name: "grpc-message", Value: grpcwire.EncodeMessage(msg)})
	}
	if p := st.Proto(); p != nil && len(p.Details) > 0 {
		if b, err := proto.Marshal(p); err == nil {
			fields = append(fields, hpack.HeaderField{Name: "grpc-status-details-bin", Value: grpcwire.EncodeBin(string(b))})
		}
	}
	return fields
}

// appendMD appends md's fields but the reserved ones, binary values in
// base64 (grpc-go's encodeMetadataHeader).
func appendMD(fields []hpack.HeaderField, md metadata.MD) []hpack.HeaderField {
	for k, vv := range md {
		if reserved(k) {
			continue
		}
		for _, v := range vv {
			if grpcwire.IsBin(k) {
				v = grpcwire.EncodeBin(v)
			}
			fields = append(fields, hpack.HeaderField{Name: k, Value: v})
		}
	}
	return fields
}

// reserved are the fields the transport writes itself (grpc-go
// isReservedHeader), and the pseudo-headers.
func reserved(k string) bool {
	if k != "" && k[0] == ':' {
		return true
	}
	switch k {
	case "content-type", "user-agent", "grpc-message-type", "grpc-encoding", "grpc-message",
		"grpc-status", "grpc-timeout", "grpc-status-details-bin", "te":
		return true
	}
	return false
}

var codeTexts = func() (t [17]string) {
	for i := range t {
		t[i] = strconv.Itoa(i)
	}
	return t
}()

func codeText(c codes.Code) string {
	if int(c) < len(codeTexts) {
		return codeTexts[c]
	}
	return strconv.FormatUint(uint64(c), 10)
}

// subtype is a gRPC content type's subtype (grpc-go grpcutil.ContentSubtype):
// "application/grpc+json" -> "json", "application/grpc" -> "".
func subtype(ct string) string {
	rest := strings.TrimPrefix(ct, "application/grpc")
	if len(rest) > 0 && rest[0] == '+' {
		return strings.ToLower(rest[1:])
	}
	return ""
}

// contentType is the response's content type for a subtype (grpc-go
// grpcutil.ContentType).
func contentType(sub string) string {
	if sub == "" {
		return "application/grpc"
	}
	return "application/grpc+" + sub
}
