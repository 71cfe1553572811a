package h2client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
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
func scriptedUpstream(t *testing.T, script func(*rawPeer), settings ...http2.Setting) (addr string, accepts *atomic.Int32) {
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
