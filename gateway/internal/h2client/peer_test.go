package h2client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// Misbehaving upstreams scripted frame by frame with x/net/http2's Framer.

// bytesCodec carries []byte messages as they are.
type bytesCodec struct{}

func (bytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}
func (bytesCodec) Unmarshal(d mem.BufferSlice, v any) error {
	*v.(*[]byte) = d.Materialize()
	return nil
}
func (bytesCodec) Name() string { return "proto" }

// rawPeer is one accepted upstream connection after the HTTP/2 handshake.
type rawPeer struct {
	nc   net.Conn
	fr   *http2.Framer
	stop <-chan struct{} // closed when the test ends
}

// scriptedUpstream listens on loopback and runs script on each connection
// once the client's preface and SETTINGS are read and the upstream's
// SETTINGS (with settings) are sent.
func scriptedUpstream(t testing.TB, script func(*rawPeer), settings ...http2.Setting) (addr string, accepts *atomic.Int32) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepts = &atomic.Int32{}
	done, stop := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); lis.Close(); <-done })
	go func() {
		defer close(done)
		for {
			nc, err := lis.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			go func() {
				defer nc.Close()
				pre := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(nc, pre); err != nil {
					return
				}
				p := &rawPeer{nc: nc, fr: http2.NewFramer(nc, nc), stop: stop}
				p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				if _, err := p.fr.ReadFrame(); err != nil { // the client's SETTINGS
					return
				}
				if err := p.fr.WriteSettings(settings...); err != nil {
					return
				}
				script(p)
			}()
		}
	}()
	return lis.Addr().String(), accepts
}

// grpcHeaders sends stream id's response headers: 200, a gRPC content type.
func (p *rawPeer) grpcHeaders(id uint32) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
}

// respond answers stream id with one message and status OK.
func (p *rawPeer) respond(id uint32, msg []byte) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
	body := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:], uint32(len(msg)))
	copy(body[5:], msg)
	_ = p.fr.WriteData(id, false, body)
	hb.Reset()
	_ = enc.WriteField(hpack.HeaderField{Name: "grpc-status", Value: "0"})
	_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
}

// An upstream that stops reading must not wedge the connection: the
// reader still answers PINGs and delivers other streams' responses while a
// large request cannot be written, and the stalled write fails the
// connection after the write timeout (before: the flusher held the write
// lock across a write with no deadline, and the reader waited on it for
// ever).
func TestUpstreamThatStopsReading(t *testing.T) {
	addr, _ := scriptedUpstream(t, func(p *rawPeer) {
		// A window large enough that only the socket holds the writer back.
		_ = p.fr.WriteWindowUpdate(0, 1<<30)
		opened := 0
		for opened < 2 {
			f, err := p.fr.ReadFrame()
			if err != nil {
				return
			}
			if _, ok := f.(*http2.MetaHeadersFrame); ok {
				opened++
			}
		}
		// Stop reading; ping, then answer the first call.
		_ = p.fr.WritePing(false, [8]byte{1})
		p.respond(1, []byte("still here"))
		<-p.stop // the connection stays open and unread
	}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})

	cl := New("upstream", Options{WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{addr})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	opts := []grpc.CallOption{grpc.ForceCodecV2(bytesCodec{})}
	first, err := cl.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/s.S/First", opts...)
	if err != nil {
		t.Fatal(err)
	}
	big, err := cl.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, "/s.S/Big", opts...)
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		payload := make([]byte, 32<<20)
		sent <- big.SendMsg(&payload)
	}()
	var got []byte
	if err := first.RecvMsg(&got); err != nil || string(got) != "still here" {
		t.Fatalf("the other stream's response: %q, %v", got, err)
	}
	start := time.Now()
	var out []byte
	err = big.RecvMsg(&out)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("stalled call ended with %v, want UNAVAILABLE", err)
	}
	// The socket buffers on loopback take several MB before the write
	// blocks, and filling them is slow under the race detector.
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("stalled connection failed after %v", d)
	}
	<-sent
}

// An upstream that ends every connection right after its SETTINGS is
// redialled after the back-off, not at once (before: about 5,600 times a
// second, for ever).
func TestUpstreamThatHangsUpAtOnceIsBackedOff(t *testing.T) {
	addr, accepts := scriptedUpstream(t, func(p *rawPeer) {
		_ = p.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	})
	cl := New("upstream", Options{})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{addr})
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		cs, err := cl.NewStream(ctx, &grpc.StreamDesc{}, "/s.S/M", grpc.ForceCodecV2(bytesCodec{}))
		if err == nil {
			// Opened before the GOAWAY arrived: it fails as not taken.
			var out []byte
			err = cs.RecvMsg(&out)
		}
		cancel()
		if err == nil {
			t.Fatal("a call succeeded on a connection the upstream ended")
		}
		if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("call: %v", err)
		}
	}
	// The first dial, one back-off of about a second (0.8-1.2 s), and at
	// most one prompt attempt a second asked for by calls.
	if n := accepts.Load(); n > 4 {
		t.Fatalf("%d connections in 1.5 s to an upstream that hangs up at once", n)
	} else {
		t.Logf("%d connections in 1.5 s", n)
	}
}

// readUntilClosed reads frames until the connection ends, calling fn on
// each.
func (p *rawPeer) readUntilClosed(fn func(http2.Frame)) {
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return
		}
		fn(f)
	}
}

// An upstream whose SETTINGS allow 0 concurrent streams takes no call: the
// call fails after the bounded wait, naming the limit, and no more than
// MaxConnsPerEndpoint connections are opened trying.
func TestUpstreamThatAllowsNoStreams(t *testing.T) {
	addr, accepts := scriptedUpstream(t, func(p *rawPeer) {
		p.readUntilClosed(func(http2.Frame) {})
	}, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0})
	cl := New("upstream", Options{StreamWait: 300 * time.Millisecond, MaxConnsPerEndpoint: 3})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{addr})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := cl.NewStream(ctx, &grpc.StreamDesc{}, "/s.S/M", grpc.ForceCodecV2(bytesCodec{}))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "concurrent stream limit") {
		t.Fatalf("call: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the wait for a stream took %v", d)
	}
	if n := accepts.Load(); n > 3 {
		t.Fatalf("%d connections, want at most 3", n)
	}
}

// A PUSH_PROMISE (push is disabled in our SETTINGS) is a connection error:
// the call fails with UNAVAILABLE naming it.
func TestUpstreamThatPushes(t *testing.T) {
	addr, _ := scriptedUpstream(t, func(p *rawPeer) {
		p.readUntilClosed(func(f http2.Frame) {
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				var hb bytes.Buffer
				_ = hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":path", Value: "/pushed"})
				_ = p.fr.WritePushPromise(http2.PushPromiseParam{StreamID: h.StreamID, PromiseID: 2, BlockFragment: hb.Bytes(), EndHeaders: true})
			}
		})
	})
	cl := New("upstream", Options{})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{addr})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := cl.NewStream(ctx, &grpc.StreamDesc{}, "/s.S/M", grpc.ForceCodecV2(bytesCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	err = cs.RecvMsg(&out)
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "PUSH_PROMISE") {
		t.Fatalf("call: %v", err)
	}
}

// DATA beyond the stream's window is a flow-control violation: the stream
// is reset with FLOW_CONTROL_ERROR and the call fails with INTERNAL, while
// the connection goes on serving.
func TestUpstreamThatOverrunsTheWindow(t *testing.T) {
	resets := make(chan http2.ErrCode, 1)
	addr, _ := scriptedUpstream(t, func(p *rawPeer) {
		p.readUntilClosed(func(f http2.Frame) {
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if f.StreamID != 1 {
					p.respond(f.StreamID, []byte("ok"))
					return
				}
				var hb bytes.Buffer
				enc := hpack.NewEncoder(&hb)
				_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
				_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
				// 1 KiB messages, 20 KiB more than the window, which
				// the caller (not reading) never reopens.
				msg := make([]byte, 1024)
				binary.BigEndian.PutUint32(msg[1:], 1024-5)
				for range (streamWindow + 20<<10) / 1024 {
					if p.fr.WriteData(1, false, msg) != nil {
						return
					}
				}
			case *http2.RSTStreamFrame:
				select {
				case resets <- f.ErrCode:
				default:
				}
			}
		})
	})
	cl := New("upstream", Options{})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{addr})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := []grpc.CallOption{grpc.ForceCodecV2(bytesCodec{})}
	cs, err := cl.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/s.S/M", opts...)
	if err != nil {
		t.Fatal(err)
	}
	if code := <-resets; code != http2.ErrCodeFlowControl {
		t.Fatalf("stream reset with %v, want FLOW_CONTROL_ERROR", code)
	}
	var out []byte
	for err == nil {
		err = cs.RecvMsg(&out) // the messages within the window, then the error
	}
	if st := status.Convert(err); st.Code() != codes.Internal || !strings.Contains(st.Message(), "flow-control window") {
		t.Fatalf("call: %v", err)
	}
	// The connection still serves.
	if err := cl.Invoke(ctx, "/s.S/Other", &[]byte{}, &out, opts...); err != nil || string(out) != "ok" {
		t.Fatalf("next call: %q, %v", out, err)
	}
}

// A backend that froze (accepts streams, answers nothing, not even PING)
// fails its connection after the keepalive, rather than holding calls that
// have no deadline for ever.
func TestFrozenUpstreamFailsOnKeepalive(t *testing.T) {
	addr, _ := scriptedUpstream(t, func(p *rawPeer) {
		p.readUntilClosed(func(http2.Frame) {})
	})
	cl := New("upstream", Options{KeepaliveTime: 200 * time.Millisecond, KeepaliveTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{addr})
	start := time.Now()
	var out []byte
	err := cl.Invoke(context.Background(), "/s.S/M", &[]byte{}, &out, grpc.ForceCodecV2(bytesCodec{}))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "keepalive") {
		t.Fatalf("call: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("failed after %v", d)
	}
}

// An endpoint that answers nothing (frozen) is ejected after 5 calls time
// out there, and the healthy one takes the calls (before: half of the
// calls went to the frozen one until it recovered).
func TestFrozenEndpointIsEjected(t *testing.T) {
	frozen, _ := scriptedUpstream(t, func(p *rawPeer) {
		p.readUntilClosed(func(f http2.Frame) {
			if pf, ok := f.(*http2.PingFrame); ok && !pf.IsAck() {
				_ = p.fr.WritePing(true, pf.Data) // alive at the HTTP/2 level
			}
		})
	})
	healthy, _ := scriptedUpstream(t, func(p *rawPeer) {
		p.readUntilClosed(func(f http2.Frame) {
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				p.respond(h.StreamID, []byte("ok"))
			}
		})
	})
	cl := New("upstream", Options{})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{frozen, healthy})
	waitReady(t, cl, 2)
	failed := 0
	for range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		var out []byte
		if err := cl.Invoke(ctx, "/s.S/M", &[]byte{}, &out, grpc.ForceCodecV2(bytesCodec{})); err != nil {
			if status.Code(err) != codes.DeadlineExceeded {
				t.Fatalf("call: %v", err)
			}
			failed++
		}
		cancel()
	}
	if failed > 5 {
		t.Fatalf("%d of 100 calls failed, want at most the 5 that eject the frozen endpoint", failed)
	}
	if ej := cl.Ejected(); len(ej) != 1 || ej[0] != frozen {
		t.Fatalf("ejected: %v, want [%s]", ej, frozen)
	}
	t.Logf("%d of 100 calls failed", failed)
}

// Forwarding a stream of small DATA frames allocates nothing per frame:
// the reader reuses its DataFrame (x/net/http2's Framer.SetReuseFrames, as
// h2front's reader does) and the frames are copied into shared chunks.
// Before, each frame allocated a DataFrame: half of what the reader's
// allocations cost a 1 KiB server stream (CPU profile under make bench's
// stream load).
func TestForwardedFramesDoNotAllocate(t *testing.T) {
	const frames, size = 2000, 100 // 200 KB: within the stream's window
	var data bytes.Buffer
	fw := http2.NewFramer(&data, nil)
	msg := make([]byte, size)
	binary.BigEndian.PutUint32(msg[1:], size-5)
	for range frames {
		_ = fw.WriteData(1, false, msg)
	}
	send := make(chan struct{})
	addr, _ := scriptedUpstream(t, func(p *rawPeer) {
		p.readUntilClosed(func(f http2.Frame) {
			h, ok := f.(*http2.MetaHeadersFrame)
			if !ok {
				return
			}
			p.grpcHeaders(h.StreamID)
			select {
			case <-send:
			case <-p.stop:
				return
			}
			_, _ = p.nc.Write(data.Bytes()) // stream 1: the client's first
		})
	})
	f := forwardedStream(t, addr)
	var in Forwarded
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	close(send)
	for got := 0; got < frames; {
		if err := f.RecvForwarded(&in); err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		got += in.Messages
		in.Free()
	}
	runtime.ReadMemStats(&after)
	n := after.Mallocs - before.Mallocs
	t.Logf("forwarding %d frames: %d allocations", frames, n)
	if n > frames/10 {
		t.Fatalf("forwarding %d frames made %d allocations, want fewer than %d", frames, n, frames/10)
	}
}

// DATA frames, and HEADERS frames that are a whole header block, whole in
// the read buffer are taken from it without the framer; the ones whose
// errors the framer reports, padded ones and HEADERS with a priority are
// still the framer's. Each case ends as it did when every frame went
// through the framer.
func TestFramesTheReaderTakesFromItsBuffer(t *testing.T) {
	msg := make([]byte, 5+3)
	binary.BigEndian.PutUint32(msg[1:], 3)
	copy(msg[5:], "abc")
	headers := func() []byte {
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
		_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
		return hb.Bytes()
	}
	trailers := func() []byte {
		var hb bytes.Buffer
		_ = hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: "grpc-status", Value: "0"})
		return hb.Bytes()
	}
	for _, tc := range []struct {
		name   string
		script func(p *rawPeer, id uint32)
		code   codes.Code
		msg    string // in the call's status; for OK, the message received
	}{
		{"plain", func(p *rawPeer, id uint32) {
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers(), EndHeaders: true})
			_ = p.fr.WriteData(id, false, msg)
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: trailers(), EndHeaders: true, EndStream: true})
		}, codes.OK, "abc"},
		{"padded", func(p *rawPeer, id uint32) {
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers(), EndHeaders: true})
			_ = p.fr.WriteDataPadded(id, false, msg, make([]byte, 10))
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: trailers(), EndHeaders: true, EndStream: true})
		}, codes.OK, "abc"},
		{"stream 0", func(p *rawPeer, id uint32) {
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers(), EndHeaders: true})
			_ = p.fr.WriteRawFrame(http2.FrameData, 0, 0, msg)
		}, codes.Unavailable, "DATA frame with stream ID 0"},
		{"inside a header block", func(p *rawPeer, id uint32) {
			// RFC 9113 section 6.10: only CONTINUATION may follow a
			// HEADERS frame without END_HEADERS.
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers()})
			_ = p.fr.WriteData(id, false, msg)
		}, codes.Unavailable, "expected CONTINUATION"},
		{"over the frame size", func(p *rawPeer, id uint32) {
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers(), EndHeaders: true})
			_ = p.fr.WriteRawFrame(http2.FrameData, 0, id, make([]byte, defaultFrame+1))
		}, codes.Unavailable, "frame too large"},
		{"headers padded and with a priority", func(p *rawPeer, id uint32) {
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers(), EndHeaders: true, PadLength: 7,
				Priority: http2.PriorityParam{Weight: 15}})
			_ = p.fr.WriteData(id, false, msg)
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: trailers(), EndHeaders: true, EndStream: true, PadLength: 3})
		}, codes.OK, "abc"},
		{"trailers in a HEADERS and a CONTINUATION", func(p *rawPeer, id uint32) {
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers(), EndHeaders: true})
			_ = p.fr.WriteData(id, false, msg)
			tr := trailers()
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: tr[:1], EndStream: true})
			_ = p.fr.WriteContinuation(id, true, tr[1:])
		}, codes.OK, "abc"},
		{"headers on stream 0", func(p *rawPeer, id uint32) {
			_ = p.fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 0, headers())
		}, codes.Unavailable, "PROTOCOL_ERROR"},
		{"headers over the frame size", func(p *rawPeer, id uint32) {
			_ = p.fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, id, make([]byte, defaultFrame+1))
		}, codes.Unavailable, "frame too large"},
		{"headers HPACK cannot decode", func(p *rawPeer, id uint32) {
			// An indexed field past the static and (empty) dynamic table.
			_ = p.fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, id, []byte{0xff, 0x7f})
		}, codes.Unavailable, "HPACK"},
		{"a CONTINUATION with no header block open", func(p *rawPeer, id uint32) {
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers(), EndHeaders: true})
			_ = p.fr.WriteContinuation(id, true, trailers())
		}, codes.Unavailable, "CONTINUATION"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := scriptedUpstream(t, func(p *rawPeer) {
				p.readUntilClosed(func(f http2.Frame) {
					if h, ok := f.(*http2.MetaHeadersFrame); ok {
						tc.script(p, h.StreamID)
					}
				})
			})
			cl := New("upstream", Options{})
			t.Cleanup(func() { cl.Close() })
			cl.Update([]string{addr})
			var out []byte
			err := cl.Invoke(testCtx(t), "/s.S/M", &[]byte{}, &out, grpc.ForceCodecV2(bytesCodec{}))
			st := status.Convert(err)
			if st.Code() != tc.code || tc.code == codes.OK && string(out) != tc.msg || tc.code != codes.OK && !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("call: %q, %v; want %v, %q", out, err, tc.code, tc.msg)
			}
		})
	}
}

// DATA for a stream the client has not opened yet is dropped (its bytes
// still count against the connection's window), and does not keep that
// stream's own DATA from it once it opens.
func TestDataForAStreamNotYetOpen(t *testing.T) {
	msg := make([]byte, 5+2)
	binary.BigEndian.PutUint32(msg[1:], 2)
	copy(msg[5:], "ok")
	addr, _ := scriptedUpstream(t, func(p *rawPeer) {
		p.readUntilClosed(func(f http2.Frame) {
			h, ok := f.(*http2.MetaHeadersFrame)
			if !ok {
				return
			}
			p.grpcHeaders(h.StreamID)
			_ = p.fr.WriteData(h.StreamID, false, msg)
			if h.StreamID == 1 {
				// The next call's stream, before it opens: read before
				// this call's trailers, so before the next call starts.
				_ = p.fr.WriteData(3, false, msg)
			}
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			_ = enc.WriteField(hpack.HeaderField{Name: "grpc-status", Value: "0"})
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
		})
	})
	cl := New("upstream", Options{})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{addr})
	for i := range 2 {
		var out []byte
		if err := cl.Invoke(testCtx(t), "/s.S/M", &[]byte{}, &out, grpc.ForceCodecV2(bytesCodec{})); err != nil || string(out) != "ok" {
			t.Fatalf("call %d: %q, %v", i+1, out, err)
		}
	}
}

// BenchmarkForwardFrames measures the reader and RecvForwarded on a server
// stream of DATA frames of one message each (what gRPC's servers send),
// per frame: 100 B, 1 KiB and 16 KiB messages. The upstream writes as the
// stream's and the connection's windows allow.
func BenchmarkForwardFrames(b *testing.B) {
	for _, size := range []int{100, 1 << 10, 16<<10 - 5} {
		b.Run(fmt.Sprintf("%dB", size+5), func(b *testing.B) {
			msg := make([]byte, 5+size)
			binary.BigEndian.PutUint32(msg[1:], uint32(size))
			total := b.N
			addr, _ := scriptedUpstream(b, func(p *rawPeer) {
				// The client's SETTINGS (read before the script) grant
				// streamWindow; the connection's window is HTTP/2's initial
				// one until the client's WINDOW_UPDATE.
				streamWin, connWin := int64(streamWindow), int64(65535)
				var buf bytes.Buffer
				w := http2.NewFramer(&buf, nil)
				answered := false
				for {
					f, err := p.fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.MetaHeadersFrame:
						var hb bytes.Buffer
						enc := hpack.NewEncoder(&hb)
						_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
						_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
						_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
						answered = true
					case *http2.WindowUpdateFrame:
						if f.StreamID == 0 {
							connWin += int64(f.Increment)
						} else {
							streamWin += int64(f.Increment)
						}
					default:
						continue
					}
					if !answered {
						continue
					}
					buf.Reset()
					for total > 0 && min(streamWin, connWin) >= int64(len(msg)) {
						_ = w.WriteData(1, false, msg)
						streamWin -= int64(len(msg))
						connWin -= int64(len(msg))
						total--
					}
					if _, err := p.nc.Write(buf.Bytes()); err != nil {
						return
					}
				}
			})
			f := forwardedStream(b, addr)
			var in Forwarded
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			b.ResetTimer()
			for got := 0; got < b.N; {
				if err := f.RecvForwarded(&in); err != nil {
					b.Fatalf("after %d messages: %v", got, err)
				}
				got += in.Messages
				in.Free()
			}
		})
	}
}

// forwardedStream opens a server-streaming call to the upstream at addr,
// half-closed, waits for its response headers and switches it to
// forwarding.
func forwardedStream(t testing.TB, addr string) forwarding {
	t.Helper()
	cl := New("upstream", Options{})
	t.Cleanup(func() { cl.Close() })
	cl.Update([]string{addr})
	cs, err := cl.NewStream(t.Context(), &grpc.StreamDesc{ServerStreams: true}, "/s.S/M", grpc.ForceCodecV2(bytesCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Header(); err != nil {
		t.Fatal(err)
	}
	f := cs.(forwarding)
	f.Forward()
	return f
}
