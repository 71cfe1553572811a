package h2front

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerFrames is a header block as a client sends it: the fields, HPACK-encoded
// with a fresh encoder, in frames of at most split bytes (a HEADERS frame,
// then CONTINUATION frames), then a PING so that a reader that stops early
// shows it.
func headerFrames(t testing.TB, fields []hpack.HeaderField, split int, raw []byte) []byte {
	t.Helper()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fields {
		if err := enc.WriteField(f); err != nil {
			t.Fatal(err)
		}
	}
	frag := append(hb.Bytes(), raw...)
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	first := frag[:min(split, len(frag))]
	rest := frag[len(first):]
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndStream: true, EndHeaders: len(rest) == 0})
	for len(rest) > 0 {
		n := min(split, len(rest))
		_ = fr.WriteContinuation(1, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	_ = fr.WritePing(false, [8]byte{1})
	return out.Bytes()
}

// outcome is what reading a block gave: the fields and truncation, or the
// kind of error and its code.
type outcome struct {
	Fields    []hpack.HeaderField
	Truncated bool
	Err       string
}

func outcomeOf(f http2.Frame, err error) outcome {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		return outcome{Err: fmt.Sprintf("stream error %v: %v", se.Code, se.Cause)}
	case errors.As(err, &ce):
		return outcome{Err: fmt.Sprintf("connection error %v", http2.ErrCode(ce))}
	case err != nil:
		return outcome{Err: err.Error()}
	}
	mh, ok := f.(*http2.MetaHeadersFrame)
	if !ok {
		return outcome{Err: fmt.Sprintf("a %T", f)}
	}
	return outcome{Fields: mh.Fields, Truncated: mh.Truncated}
}

// The connection's header block reader gives what the framer's own
// (x/net http2 frame.go readMetaFrame, with MetaHeadersFrame.checkPseudos)
// gives for the same bytes, which it replaces: the fields, truncation past
// the list limit, and the same errors with the same codes. Each block is
// read by both, in one frame and in CONTINUATION frames of 7 bytes, and
// each reader must then be at the PING that follows it.
func TestHeaderBlockAsTheFramerReadsIt(t *testing.T) {
	const limit = 200
	f := func(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }
	req := []hpack.HeaderField{f(":method", "GET"), f(":scheme", "http"), f(":path", "/api/v1/x"), f(":authority", "a"), f("env", "env1")}
	long := strings.Repeat("v", 120)
	cases := []struct {
		name   string
		fields []hpack.HeaderField
		raw    []byte // bytes after the encoded fields
	}{
		{"request", req, nil},
		{"no fields", nil, nil},
		{"upper-case name", append(req[:4:4], f("Env", "env1")), nil},
		{"name not a token", append(req[:4:4], f("e nv", "env1")), nil},
		{"value with a NUL", append(req[:4:4], f("env", "e\x00")), nil},
		{"pseudo after regular", append(append(req[:0:0], f("env", "env1")), req[:4]...), nil},
		{"unknown pseudo", append(req[:4:4], f(":foo", "x")), nil},
		{"repeated pseudo", append(req[:4:4], f(":path", "/y")), nil},
		{"request and response pseudo", append(req[:4:4], f(":status", "200")), nil},
		{"over the list limit: truncated", append(req[:4:4], f("a", long), f("b", long)), nil},
		{"trailer counted per name", append(req[:4:4], f("trailer", "a, b, c")), nil},
		{"undecodable", req, []byte{0xff, 0xff, 0xff, 0xff, 0xff}},
		{"string over the limit", append(req[:4:4], f("x", strings.Repeat("v", limit+1))), nil},
	}
	for _, tc := range cases {
		for _, split := range []int{1 << 14, 7} {
			t.Run(fmt.Sprintf("%s/frames of %d", tc.name, split), func(t *testing.T) {
				wire := headerFrames(t, tc.fields, split, tc.raw)

				ref := http2.NewFramer(nil, bytes.NewReader(wire))
				ref.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				ref.MaxHeaderListSize = limit
				want := outcomeOf(ref.ReadFrame())

				c := &conn{}
				c.fr = http2.NewFramer(nil, bytes.NewReader(wire))
				c.hb.init(4096, limit)
				got := outcomeOf(c.readFrame())
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("read as\n  %+v\nthe framer reads it as\n  %+v", got, want)
				}
				if want.Err != "" && strings.HasPrefix(want.Err, "connection error") {
					return // the connection ends: nothing more is read
				}
				for name, fr := range map[string]*http2.Framer{"framer": ref, "envgate": c.fr} {
					if next, err := fr.ReadFrame(); err != nil {
						t.Fatalf("%s: after the block: %v", name, err)
					} else if _, ok := next.(*http2.PingFrame); !ok {
						t.Fatalf("%s: after the block a %T, want the PING", name, next)
					}
				}
			})
		}
	}
}

// A block's fields are the request's own: the next block, decoded into
// the connection's reused slice, does not change them.
func TestHeaderBlockFieldsOutliveTheNextBlock(t *testing.T) {
	f := func(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }
	var wire bytes.Buffer
	wire.Write(headerFrames(t, []hpack.HeaderField{f(":method", "GET"), f(":path", "/one"), f("env", "env1")}, 1<<14, nil))
	wire.Write(headerFrames(t, []hpack.HeaderField{f(":method", "POST"), f(":path", "/two"), f("env", "env2")}, 1<<14, nil))
	c := &conn{}
	c.fr = http2.NewFramer(nil, &wire)
	c.hb.init(4096, 1<<14)
	first, err := c.readFrame()
	if err != nil {
		t.Fatal(err)
	}
	keep := append([]hpack.HeaderField(nil), first.(*http2.MetaHeadersFrame).Fields...)
	if _, err := c.readFrame(); err != nil { // the PING
		t.Fatal(err)
	}
	if _, err := c.readFrame(); err != nil {
		t.Fatal(err)
	}
	if got := first.(*http2.MetaHeadersFrame).Fields; !reflect.DeepEqual(got, keep) {
		t.Fatalf("the first block's fields became %v after the second was read, were %v", got, keep)
	}
}

// BenchmarkHeaderBlock is a gRPC request's header block read and decoded,
// by the connection's reader and by the framer's.
func BenchmarkHeaderBlock(b *testing.B) {
	f := func(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }
	wire := headerFrames(b, []hpack.HeaderField{f(":method", "POST"), f(":scheme", "http"), f(":path", "/echo.EchoService/Call"),
		f(":authority", "127.0.0.1:8080"), f("content-type", "application/grpc"), f("user-agent", "grpc-go/1.79.0"),
		f("te", "trailers"), f("grpc-timeout", "9999891u"), f("env", "env1")}, 1<<14, nil)
	r := bytes.NewReader(nil)
	b.Run("envgate", func(b *testing.B) {
		c := &conn{}
		c.fr = http2.NewFramer(nil, r)
		c.hb.init(4096, 1<<14)
		b.ReportAllocs()
		for b.Loop() {
			r.Reset(wire)
			if _, err := c.readFrame(); err != nil {
				b.Fatal(err)
			}
			_, _ = c.readFrame() // the PING
		}
	})
	b.Run("framer", func(b *testing.B) {
		fr := http2.NewFramer(nil, r)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		b.ReportAllocs()
		for b.Loop() {
			r.Reset(wire)
			if _, err := fr.ReadFrame(); err != nil {
				b.Fatal(err)
			}
			_, _ = fr.ReadFrame()
		}
	})
}
