package h2client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/bufpool"
	"github.com/envgate/envgate/gateway/internal/grpcwire"
	"github.com/envgate/envgate/gateway/internal/hpackmemo"
)

// errStreamDone means the stream ended before a write; the caller learns
// why from RecvMsg, as with gRPC's own client streams.
var errStreamDone = errors.New("stream done")

// pool holds received messages: each buffer is filled by the copy out of
// its frame at once, so it need not be cleared (bufpool).
var pool mem.BufferPool = bufpool.Default

// stream is one call on a connection. It implements grpc.ClientStream.
type stream struct {
	c         *conn
	id        uint32
	ctx       context.Context
	stopWatch func() bool

	// Request, fixed before open.
	method, authority, contentType, userAgent string
	md                                        metadata.MD
	codec                                     encoding.CodecV2
	comp                                      encoding.Compressor
	compName                                  string
	maxRecv, maxSend                          int

	sendWin    int64 // under c.mu
	sendClosed bool  // under c.wmu: END_STREAM or RST_STREAM sent
	rstSent    bool  // under c.wmu
	sendBufs   [4][]byte

	mu        sync.Mutex
	q         msgQueue
	recv      recvWindow
	header    metadata.MD
	recvComp  string
	trailer   metadata.MD
	final     *status.Status
	finished  bool
	hdrCh     chan struct{} // closed by notify once headers or the end are known
	hdrClosed bool
	kind      Failure       // how the call failed at the transport, with final
	reported  bool          // the call's outcome went to the endpoint's health
	local     bool          // ended by its context
	done      chan struct{} // closed on finish; made when first waited for (doneCh)
	wake      chan struct{} // signals the reader of new data
}

func (s *stream) Context() context.Context { return s.ctx }

// Addr is the upstream endpoint the stream went to.
func (s *stream) Addr() string { return s.c.addr }

// RecvCompress is the upstream's response compression, once Header
// returned.
func (s *stream) RecvCompress() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recvComp
}

// encodeHeaders writes the request's header block; called under c.wmu.
// The fields that never change are written as prepared bytes (static
// table entries, literals never indexed), which leaves the dynamic table
// alone and skips the encoder's table search for them.
func (s *stream) encodeHeaders(enc *hpackmemo.Encoder, buf *bytes.Buffer) {
	w := func(k, v string) { enc.WriteField(hpack.HeaderField{Name: k, Value: v}) }
	// First from the encoder: it may have to start the block with a
	// table size update.
	w(":path", s.method)
	buf.Write(fixedPseudo)
	w(":authority", s.authority)
	if s.contentType == "application/grpc" {
		buf.Write(fixedFields)
	} else {
		w("content-type", s.contentType)
		buf.Write(fixedFields[len(grpcContentType):])
	}
	w("user-agent", s.userAgent)
	if s.compName != "" {
		w("grpc-encoding", s.compName)
	}
	if dl, ok := s.ctx.Deadline(); ok {
		// New with every call: kept out of the dynamic table, where it
		// would only push out the fields that repeat.
		enc.WriteField(hpack.HeaderField{Name: "grpc-timeout", Value: grpcwire.EncodeTimeout(time.Until(dl)), Sensitive: true})
	}
	for k, vs := range s.md {
		if reserved(k) {
			continue
		}
		bin := grpcwire.IsBin(k)
		// A request ID is new with every call: kept out of the dynamic
		// table like grpc-timeout.
		never := k == "x-request-id"
		for _, v := range vs {
			if bin {
				v = grpcwire.EncodeBin(v)
			}
			if never {
				enc.WriteField(hpack.HeaderField{Name: k, Value: v, Sensitive: true})
				continue
			}
			w(k, v)
		}
	}
}

var (
	// :method POST and :scheme http, from the static table.
	fixedPseudo = []byte{0x80 | 3, 0x80 | 6}
	// content-type application/grpc (name from the static table), then te
	// and grpc-accept-encoding, all literals without indexing.
	grpcContentType = append([]byte{0x0f, 31 - 15}, hpackString("application/grpc")...)
	fixedFields     = slices.Concat(grpcContentType,
		[]byte{0}, hpackString("te"), hpackString("trailers"),
		[]byte{0}, hpackString("grpc-accept-encoding"), hpackString(acceptEncoding))
)

// hpackString is a string literal without Huffman coding (RFC 7541 5.2).
func hpackString(v string) []byte {
	n := len(v)
	var b []byte
	if n < 127 {
		b = append(b, byte(n))
	} else {
		b = append(b, 127)
		for n -= 127; n >= 128; n >>= 7 {
			b = append(b, byte(n&0x7f|0x80))
		}
		b = append(b, byte(n))
	}
	return append(b, v...)
}

// Wire is implemented by messages a proxy carries as their wire bytes.
// SendMsg sends them with the compressed flag they report and never
// compresses them (the call must then name the encoding with
// grpc.UseCompressor); RecvMsg hands them the bytes as received and sets
// their flag, without inflating them. The size limits apply to the wire
// bytes.
type Wire interface {
	WireCompressed() bool
	SetWireCompressed(bool)
}

// Reserver is implemented by messages whose receiver must make room for
// them before they are let in: for a message larger than the stream's
// window, RecvMsg calls Reserve with its size (length prefix included)
// before it opens the window for the rest, and fails with Reserve's error.
// A stream waiting for its next message holds no reservation, and an
// upstream whose message is not reserved yet can send no more than the
// stream's window; messages within the window are let in as they come.
type Reserver interface {
	Reserve(size int) error
}

// SendMsg sends one message. It returns io.EOF when the stream has ended;
// RecvMsg then tells why.
func (s *stream) SendMsg(m any) error {
	wire, isWire := m.(Wire)
	compressed := isWire && wire.WireCompressed()
	data, err := s.codec.Marshal(m)
	if err != nil {
		return status.Errorf(codes.Internal, "envgate: marshaling the request: %v", err)
	}
	defer func() { data.Free() }() // data may be replaced by its compressed form
	var flag byte
	if compressed {
		if s.compName == "" {
			return status.Error(codes.Internal, "envgate: a compressed message on a call with no encoding")
		}
		flag = 1
	} else if s.comp != nil && !isWire {
		var out mem.BufferSlice
		w := mem.NewWriter(&out, pool)
		cw, err := s.comp.Compress(w)
		if err == nil {
			for _, b := range data {
				if _, err = cw.Write(b.ReadOnlyData()); err != nil {
					break
				}
			}
			if err == nil {
				err = cw.Close()
			}
		}
		if err != nil {
			out.Free()
			return status.Errorf(codes.Internal, "envgate: compressing the request: %v", err)
		}
		data.Free()
		data = out
		flag = 1
	}
	n := data.Len()
	if n > s.maxSend {
		return status.Errorf(codes.ResourceExhausted, "grpc: trying to send message larger than max (%d vs. %d)", n, s.maxSend)
	}
	var prefix [5]byte
	prefix[0] = flag
	binary.BigEndian.PutUint32(prefix[1:], uint32(n))
	bufs := s.sendBufs[:0]
	bufs = append(bufs, prefix[:])
	for _, b := range data {
		bufs = append(bufs, b.ReadOnlyData())
	}
	if err := s.c.writeData(s, bufs, 5+n); err != nil {
		return io.EOF
	}
	return nil
}

// CloseSend half-closes the request.
func (s *stream) CloseSend() error {
	s.c.closeSend(s)
	return nil
}

// Header waits for the response headers. A trailers-only answer has none:
// nil, with the call's error if it failed.
func (s *stream) Header() (metadata.MD, error) {
	<-s.hdrCh
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.header == nil && s.finished {
		return nil, withFailure(s.final, s.kind)
	}
	return s.header, nil
}

// Trailer returns the trailers once RecvMsg returned an error.
func (s *stream) Trailer() metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.trailer
}

// Ready reports whether RecvMsg would return without waiting: a whole
// message is in, or the call's end. A proxy holds back what it sends the
// client meanwhile, so that it leaves with what follows in one write.
func (s *stream) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finished || len(s.q.msgs) > 0 && s.q.msgs[0].complete || len(s.q.raw) > 0
}

// RecvMsg receives the next message: io.EOF after the last one of a call
// that succeeded, the call's status error otherwise.
func (s *stream) RecvMsg(m any) error {
	for {
		s.mu.Lock()
		if msg, ok := s.q.pop(); ok {
			grant := s.consumedLocked(5 + int64(msg.size))
			s.mu.Unlock()
			if grant > 0 {
				s.c.windowUpdate(s.id, grant)
			}
			return s.decode(msg.flag, msg.data, m)
		}
		if s.finished {
			return s.endLocked()
		}
		if missing := s.q.missing(); missing > s.recv.left {
			// A message larger than the window: let all of it in, once
			// the receiver made room for it.
			if res, ok := m.(Reserver); ok {
				if size, ok := s.q.unreserved(); ok {
					s.mu.Unlock()
					if err := res.Reserve(5 + size); err != nil {
						return err
					}
					continue
				}
			}
			grant := s.recv.grow(missing)
			s.mu.Unlock()
			s.c.windowUpdate(s.id, grant)
			continue
		}
		s.mu.Unlock()
		<-s.wake
	}
}

// endLocked is what a reader gets once it took everything of a finished
// call: io.EOF after a call that succeeded, its status otherwise. s.mu
// held; it returns with it unlocked.
func (s *stream) endLocked() error {
	st, partial, kind := s.final, s.q.partial(), s.kind
	s.q.free()
	s.mu.Unlock()
	if st.Code() != codes.OK {
		return withFailure(st, kind)
	}
	if partial {
		return status.Error(codes.Internal, "envgate: the upstream ended the call inside a message")
	}
	return io.EOF
}

// Forward switches the response to forwarding, for a proxy that sends
// the client what the upstream sent as it came: RecvForwarded hands over
// all the bytes that are in, the frames' payloads copied into shared
// buffers, where RecvMsg copies each message into its own and hands them
// over one at a time (gRPC's servers send a frame per message, and a
// 1 KiB stream's arrive a dozen at a time). Message boundaries are still
// tracked, to count messages and hold them to the size limit. The caller
// calls it once, after the headers, and no RecvMsg after it.
func (s *stream) Forward() {
	s.mu.Lock()
	s.q.startForward()
	s.mu.Unlock()
}

// Forwarded is what RecvForwarded hands over.
type Forwarded struct {
	Data       [][]byte // the bytes as they came, prefixes and all; they may end inside a message
	Messages   int      // the messages that ended in Data
	Payload    int      // Data's bytes that are messages' (not their prefixes')
	Compressed bool     // a message that began in Data has its compressed flag
	segs       []rawSeg

	// First backing of Data and segs: a unary answer's bytes are one or
	// two buffers, and growing both slices from nothing was two
	// allocations per call.
	dataBuf [4][]byte
	segBuf  [4]rawSeg
}

// Free gives Data's buffers back; Data is not to be used after.
func (f *Forwarded) Free() {
	for i := range f.segs {
		f.segs[i].free()
		f.segs[i] = rawSeg{}
	}
	f.segs = f.segs[:0]
	clear(f.Data)
	f.Data = f.Data[:0]
}

// RecvForwarded waits for response bytes after Forward and hands over all
// that are in, into f (whose slices it reuses; f must have been freed);
// the stream's window bounds them. At the call's end it returns RecvMsg's
// error: io.EOF, or the call's status (an upstream that stopped inside a
// message is an error, as for RecvMsg).
func (s *stream) RecvForwarded(f *Forwarded) error {
	for {
		s.mu.Lock()
		if len(s.q.raw) > 0 {
			n := s.q.takeRaw(f)
			grant := s.consumedLocked(int64(n))
			s.mu.Unlock()
			if grant > 0 {
				s.c.windowUpdate(s.id, grant)
			}
			return nil
		}
		if s.finished {
			return s.endLocked()
		}
		s.mu.Unlock()
		<-s.wake
	}
}

// consumedLocked accounts n bytes read and returns the window to give back.
func (s *stream) consumedLocked(n int64) int64 {
	if s.finished {
		return 0
	}
	return s.recv.consumed(n, streamWindow)
}

func (s *stream) decode(flag byte, data mem.BufferSlice, m any) error {
	w, isWire := m.(Wire)
	if flag&1 != 0 && !isWire {
		s.mu.Lock()
		name := s.recvComp
		s.mu.Unlock()
		var err error
		if data, err = Decompress(name, data, s.maxRecv); err != nil {
			return err
		}
	}
	err := s.codec.Unmarshal(data, m)
	data.Free()
	if err != nil {
		return status.Errorf(codes.Internal, "envgate: unmarshaling the response: %v", err)
	}
	if isWire {
		w.SetWireCompressed(flag&1 != 0)
	}
	return nil
}

// Decompress inflates one message compressed in the named encoding, at
// most max bytes, with gRPC's statuses for what goes wrong. It frees data.
func Decompress(name string, data mem.BufferSlice, max int) (mem.BufferSlice, error) {
	defer data.Free()
	if name == "" || name == "identity" {
		return nil, status.Error(codes.Internal, "grpc: compressed flag set with identity or empty encoding")
	}
	comp := encoding.GetCompressor(name)
	if comp == nil {
		return nil, status.Errorf(codes.Internal, "grpc: Decompressor is not installed for grpc-encoding %q", name)
	}
	r, err := comp.Decompress(data.Reader())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "grpc: failed to decompress the received message: %v", err)
	}
	out, err := mem.ReadAll(io.LimitReader(r, int64(max)+1), pool)
	if err != nil {
		out.Free()
		return nil, status.Errorf(codes.Internal, "grpc: failed to decompress the received message: %v", err)
	}
	if out.Len() > max {
		out.Free()
		return nil, status.Errorf(codes.ResourceExhausted, "grpc: received message after decompression larger than max %d", max)
	}
	return out, nil
}

// onData takes a DATA frame's payload; n counts its padding too.
func (s *stream) onData(data []byte, n int64, end bool) {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	if !s.recv.take(n) {
		s.mu.Unlock()
		s.fail(status.New(codes.Internal, "envgate: the upstream sent more than the stream's flow-control window"), http2.ErrCodeFlowControl)
		return
	}
	if s.header == nil {
		s.mu.Unlock()
		s.fail(status.New(codes.Internal, "envgate: the upstream sent data before response headers"), http2.ErrCodeProtocol)
		return
	}
	if err := s.q.write(data, s.maxRecv); err != nil {
		s.mu.Unlock()
		s.fail(err, http2.ErrCodeCancel)
		return
	}
	s.recv.pending += n - int64(len(data)) // padding is never read
	s.mu.Unlock()
	if end {
		s.finish(status.New(codes.Internal, "envgate: the upstream closed the stream without sending trailers"), nil, true)
	}
	s.c.wakeLater(s)
}

// doneCh is closed once the stream finishes. It is made when first asked
// for: a writer waits on it only when a window or the connection's buffer
// is full, and most streams end with nobody having waited.
func (s *stream) doneCh() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		if s.finished {
			return closedChan
		}
		s.done = make(chan struct{})
	}
	return s.done
}

var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// notify wakes whoever waits on the stream: Header's waiter once the
// headers or the end are known, RecvMsg's for anything new.
func (s *stream) notify() {
	s.mu.Lock()
	if (s.header != nil || s.finished) && !s.hdrClosed {
		s.hdrClosed = true
		close(s.hdrCh)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// onHeaders takes response headers, or trailers; the reader wakes the
// stream after. fields are the decoded header block, valid during the call
// only; truncated says the block was over the header list size limit.
func (s *stream) onHeaders(fields []hpack.HeaderField, end, truncated bool) {
	s.mu.Lock()
	got := s.header != nil
	s.mu.Unlock()
	if got && !end {
		s.fail(status.New(codes.Internal, "a HEADERS frame cannot appear in the middle of a stream"), http2.ErrCodeProtocol)
		return
	}
	if truncated {
		s.fail(status.New(codes.Internal, "upstream header list size exceeded limit"), http2.ErrCodeFrameSize)
		return
	}
	var (
		md          metadata.MD // made for the first field kept
		httpStatus  string
		contentType string
		grpcStatus  = ""
		grpcMessage string
		comp        string
	)
	for _, hf := range fields {
		switch hf.Name {
		case ":status":
			httpStatus = hf.Value
		case "content-type":
			contentType = hf.Value
		case "grpc-status":
			grpcStatus = hf.Value
		case "grpc-message":
			grpcMessage = grpcwire.DecodeMessage(hf.Value)
		case "grpc-encoding":
			comp = hf.Value
		default:
			if !responseMetadata(hf.Name) {
				continue
			}
			v := hf.Value
			if grpcwire.IsBin(hf.Name) {
				var err error
				if v, err = grpcwire.DecodeBin(v); err != nil {
					s.fail(status.Newf(codes.Internal, "transport: malformed %s: %v", hf.Name, err), http2.ErrCodeProtocol)
					return
				}
			}
			if md == nil {
				md = metadata.MD{}
			}
			md[hf.Name] = append(md[hf.Name], v)
		}
	}
	if !got {
		if st := checkResponse(httpStatus, contentType); st != nil {
			s.fail(st, http2.ErrCodeProtocol)
			return
		}
	}
	if !end {
		if md == nil {
			md = metadata.MD{} // headers present, none to pass on: not trailers-only
		}
		s.mu.Lock()
		s.header = md
		s.recvComp = comp
		s.reported = true
		s.mu.Unlock()
		s.c.report(success)
		return
	}
	code := codes.Unknown
	if grpcStatus != "" {
		c, err := strconv.ParseUint(grpcStatus, 10, 32)
		if err != nil {
			s.finish(status.Newf(codes.Unknown, "transport: malformed grpc-status: %v", err), md, true)
			return
		}
		code = codes.Code(c)
	}
	if !got {
		s.mu.Lock()
		s.reported = true
		s.mu.Unlock()
		s.c.report(headersResult(true, code))
	}
	s.finish(finalStatus(code, grpcMessage, md["grpc-status-details-bin"]), md, true)
}

// checkResponse returns the status of a response that is not gRPC's.
func checkResponse(httpStatus, contentType string) *status.Status {
	var errs []string
	code := codes.Internal
	if httpStatus == "" {
		errs = append(errs, "malformed header: missing HTTP status")
	} else if httpStatus != "200" {
		n, err := strconv.Atoi(httpStatus)
		if err != nil {
			return status.Newf(codes.Internal, "transport: malformed http-status: %v", err)
		}
		code = httpStatusCode(n)
		errs = append(errs, fmt.Sprintf("unexpected HTTP status code received from server: %d (%s)", n, http.StatusText(n)))
	}
	if contentType == "" {
		errs = append(errs, "malformed header: missing HTTP content-type")
	} else if contentType != "application/grpc" && !strings.HasPrefix(contentType, "application/grpc+") && !strings.HasPrefix(contentType, "application/grpc;") {
		errs = append(errs, fmt.Sprintf("transport: received unexpected content-type %q", contentType))
	}
	if len(errs) == 0 {
		return nil
	}
	if code == codes.Internal && httpStatus == "200" {
		code = codes.Unknown
	}
	return status.New(code, strings.Join(errs, "; "))
}

// finishAs is finish for a transport failure of kind.
func (s *stream) finishAs(st *status.Status, kind Failure, remoteDone bool) bool {
	s.mu.Lock()
	if !s.finished {
		s.kind = kind
	}
	s.mu.Unlock()
	return s.finish(st, nil, remoteDone)
}

// fail ends the stream on our side with st and resets it with code.
func (s *stream) fail(st *status.Status, code http2.ErrCode) {
	if s.finish(st, nil, false) {
		s.notify()
		s.c.reset(s, code)
	}
}

// finish records the call's end once; it reports whether this call did,
// and the caller then notifies. remoteDone says the upstream closed its
// side, so no reset is owed.
func (s *stream) finish(st *status.Status, trailer metadata.MD, remoteDone bool) bool {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return false
	}
	s.finished = true
	s.final = st
	s.trailer = trailer
	if s.done != nil {
		close(s.done)
	}
	stop := s.stopWatch
	report, local := !s.reported, s.local
	s.reported = true
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	if report {
		// Ended before response headers: reset, lost, timed out or
		// cancelled.
		if r, ok := endResult(s.ctx, local); ok {
			s.c.report(r)
		}
	}
	s.c.remove(s)
	if remoteDone {
		// An upstream that answered before the whole request arrived
		// gets the stream closed, as gRPC's transport does.
		s.c.closeHalfOpen(s)
	}
	return true
}

// cancel ends the stream because its context ended.
func (s *stream) cancel() { s.endLocally(status.FromContextError(s.ctx.Err())) }

// Abort ends the stream as a cancellation of its context would, its
// context left as it is: RST_STREAM(CANCEL) if it is still open, and
// CANCELED for whoever waits on it. A caller that ends its streams itself
// (the proxy) needs no cancelable context of its own per call.
func (s *stream) Abort() { s.endLocally(status.FromContextError(context.Canceled)) }

// endLocally ends the stream on the caller's side with st, resetting it
// with CANCEL; a stream that ended already is left as it is.
func (s *stream) endLocally(st *status.Status) {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.local = true
	s.mu.Unlock()
	s.fail(st, http2.ErrCodeCancel)
}

// msgQueue holds the messages received and not yet read, split at their
// length prefixes as they arrive, so a message that came in one frame is
// one pooled buffer.
type msgQueue struct {
	msgs   []rmsg // the last may be incomplete
	pfx    [5]byte
	pfxLen int

	// Forwarding (stream.Forward): the bytes as they came, frames
	// sharing buffers of rawChunk bytes, with the messages' boundaries
	// tracked.
	forward bool
	raw     []rawSeg
	rawBuf  [4]rawSeg // raw's first backing: a unary answer's prefix and buffers, which took two allocations to grow into
	left    int       // bytes of the message in progress still to come
	ended   int       // messages that ended in raw
	payload int       // raw's bytes that are messages'
	flags   byte      // the flags of the messages that began in raw
}

// rawChunk is the size of the buffers forwarded bytes are copied into: a
// stream's small frames (gRPC's servers send a frame per message) share
// one, where a buffer each was half of a 1 KiB stream's cost.
const rawChunk = 16 << 10

// rawSeg is a piece of the forwarded bytes: a buffer frames are copied
// into (chunk), or a message's buffer that was in before the switch,
// handed on as it is.
type rawSeg struct {
	chunk *[]byte
	buf   mem.Buffer
}

func (r rawSeg) bytes() []byte {
	if r.chunk != nil {
		return *r.chunk
	}
	return r.buf.ReadOnlyData()
}

func (r rawSeg) free() {
	if r.chunk != nil {
		pool.Put(r.chunk)
	} else if r.buf != nil {
		r.buf.Free()
	}
}

type rmsg struct {
	flag     byte
	size     int
	data     mem.BufferSlice
	complete bool
	reserved bool // its Reserver was told
}

// startForward switches the queue to forwarding: what it holds becomes
// bytes again, prefixes and all.
func (q *msgQueue) startForward() {
	if q.forward {
		return
	}
	q.forward = true
	q.raw = q.rawBuf[:0]
	for _, m := range q.msgs {
		pfx := pool.Get(5) // a small buffer: the message's own follow
		copy(*pfx, []byte{m.flag, byte(m.size >> 24), byte(m.size >> 16), byte(m.size >> 8), byte(m.size)})
		q.raw = append(q.raw, rawSeg{chunk: pfx})
		for _, b := range m.data {
			q.raw = append(q.raw, rawSeg{buf: b}) // handed on, not copied
		}
		q.payload += m.data.Len()
		q.flags |= m.flag
		if m.complete {
			q.ended++
		} else {
			q.left = m.size - m.data.Len()
		}
	}
	q.msgs = nil
	if q.pfxLen > 0 {
		q.appendRaw(q.pfx[:q.pfxLen])
	}
}

// appendRaw copies p behind what raw holds, into its last buffer while
// there is room.
func (q *msgQueue) appendRaw(p []byte) {
	for len(p) > 0 {
		if n := len(q.raw); n == 0 || q.raw[n-1].chunk == nil || len(*q.raw[n-1].chunk) == cap(*q.raw[n-1].chunk) {
			b := pool.Get(max(len(p), rawChunk))
			*b = (*b)[:0]
			q.raw = append(q.raw, rawSeg{chunk: b})
		}
		last := q.raw[len(q.raw)-1].chunk
		k := min(len(p), cap(*last)-len(*last))
		*last = append(*last, p[:k]...)
		p = p[k:]
	}
}

// writeRaw takes a DATA frame's payload when forwarding. A message over
// limit is an error, and nothing of it from this frame on is forwarded.
func (q *msgQueue) writeRaw(frame []byte, limit int) *status.Status {
	data := frame
	for len(data) > 0 {
		if q.left > 0 {
			k := min(q.left, len(data))
			q.left -= k
			q.payload += k
			data = data[k:]
			if q.left == 0 {
				q.ended++
			}
			continue
		}
		start := len(frame) - len(data) - q.pfxLen // where the prefix began in this frame
		k := copy(q.pfx[q.pfxLen:], data)
		q.pfxLen += k
		data = data[k:]
		if q.pfxLen < 5 {
			break
		}
		q.pfxLen = 0
		size := int64(binary.BigEndian.Uint32(q.pfx[1:]))
		if size > int64(limit) {
			q.appendRaw(frame[:max(start, 0)])
			return status.Newf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", size, limit)
		}
		q.flags |= q.pfx[0]
		if size == 0 {
			q.ended++
		} else {
			q.left = int(size)
		}
	}
	q.appendRaw(frame)
	return nil
}

// takeRaw hands what forwarding queued over to f and returns its length.
func (q *msgQueue) takeRaw(f *Forwarded) int {
	if f.Data == nil {
		f.Data, f.segs = f.dataBuf[:0], f.segBuf[:0]
	}
	n := 0
	for _, r := range q.raw {
		b := r.bytes()
		f.Data = append(f.Data, b)
		n += len(b)
	}
	f.segs = append(f.segs, q.raw...)
	f.Messages, f.Payload, f.Compressed = q.ended, q.payload, q.flags&1 != 0
	clear(q.raw)
	q.raw = q.raw[:0]
	q.ended, q.payload, q.flags = 0, 0, 0
	return n
}

// unreserved returns the size of the first message, once its prefix is
// in, if no Reserver was told of it yet, and marks it told.
func (q *msgQueue) unreserved() (int, bool) {
	if len(q.msgs) == 0 || q.msgs[0].reserved {
		return 0, false
	}
	q.msgs[0].reserved = true
	return q.msgs[0].size, true
}

// write takes a DATA frame's payload; a message over max is an error.
func (q *msgQueue) write(data []byte, max int) *status.Status {
	if q.forward {
		return q.writeRaw(data, max)
	}
	for len(data) > 0 {
		last := len(q.msgs) - 1
		if last < 0 || q.msgs[last].complete {
			k := copy(q.pfx[q.pfxLen:], data)
			q.pfxLen += k
			data = data[k:]
			if q.pfxLen < 5 {
				return nil
			}
			q.pfxLen = 0
			size := int64(binary.BigEndian.Uint32(q.pfx[1:]))
			if size > int64(max) {
				return status.Newf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", size, max)
			}
			q.msgs = append(q.msgs, rmsg{flag: q.pfx[0], size: int(size), complete: size == 0})
			continue
		}
		m := &q.msgs[last]
		k := min(m.size-m.data.Len(), len(data))
		m.data = append(m.data, mem.Copy(data[:k], pool))
		data = data[k:]
		m.complete = m.data.Len() == m.size
	}
	return nil
}

// pop removes the first message if it is complete.
func (q *msgQueue) pop() (rmsg, bool) {
	if len(q.msgs) == 0 || !q.msgs[0].complete {
		return rmsg{}, false
	}
	m := q.msgs[0]
	q.msgs[0] = rmsg{}
	if q.msgs = q.msgs[1:]; len(q.msgs) == 0 {
		q.msgs = q.msgs[:0:0]
	}
	return m, true
}

// missing is how many bytes the first message still lacks.
func (q *msgQueue) missing() int64 {
	if len(q.msgs) == 0 || q.msgs[0].complete {
		return 0
	}
	return int64(q.msgs[0].size - q.msgs[0].data.Len())
}

func (q *msgQueue) partial() bool { return q.pfxLen > 0 || len(q.msgs) > 0 || q.left > 0 }

func (q *msgQueue) free() {
	for _, m := range q.msgs {
		m.data.Free()
	}
	q.msgs = nil
	for _, r := range q.raw {
		r.free()
	}
	clear(q.raw) // rawBuf keeps no buffer given back
	q.raw = nil
}
