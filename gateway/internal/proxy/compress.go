package proxy

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/gzip" // registered first, so the registration below replaces it
	"google.golang.org/grpc/mem"
)

// Compressed messages pass through compressed, as Envoy forwards them: the
// bytes and the compressed flag go on as they came, nothing is inflated,
// and the message size limit applies to the bytes on the wire.
//
// grpc-go's server has no switch for that, so the gateway marks the bytes
// it must not touch with a prefix only this process knows (16 random
// bytes, never sent anywhere):
//
//   - requests: the server's decompressor for gzip (RecvDecompressor,
//     which takes precedence over the registry for its own encoding)
//     returns the wire bytes behind the marker, so the codec learns
//     per message whether it was compressed and strips the marker;
//   - responses: the codec puts the marker before a message the upstream
//     sent compressed, and the registered gzip compressor, which the
//     server uses to send, passes bytes behind the marker as they are and
//     compresses any other (a message the upstream sent uncompressed on a
//     compressed stream).
//
// Everything else in the process (the gateway's own health service, the
// tests' in-process servers and clients) sees ordinary gzip: no marker, no
// pass-through.

const markerLen = 16

var marker = func() (m [markerLen]byte) {
	if _, err := rand.Read(m[:]); err != nil {
		panic(fmt.Sprintf("proxy: no randomness for the pass-through marker: %v", err))
	}
	return m
}()

// markerBuf is the marker as a buffer to put before a message's own.
var markerBuf = mem.SliceBuffer(marker[:])

// MarkerLen is how much longer than on the wire a compressed request is
// when the server's limit is checked: the server's receive limit must be
// the message limit plus this.
const MarkerLen = markerLen

func init() { encoding.RegisterCompressor(passGzip{}) }

// RecvDecompressor is the server option that hands compressed requests
// over as their wire bytes. It is grpc-go's legacy (deprecated) per-server
// decompressor: the only one the server prefers to the registry.
func RecvDecompressor() grpc.ServerOption { return grpc.RPCDecompressor(wireDecompressor{}) }

// wireDecompressor is a grpc.Decompressor for gzip that leaves the bytes
// compressed, behind the marker.
type wireDecompressor struct{}

func (wireDecompressor) Do(r io.Reader) ([]byte, error) {
	var b bytes.Buffer
	if rem, ok := r.(interface{ Remaining() int }); ok {
		b.Grow(markerLen + rem.Remaining())
	}
	b.Write(marker[:])
	if _, err := b.ReadFrom(r); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func (wireDecompressor) Type() string { return "gzip" }

// unmark strips the marker from data and reports whether it was there.
// The wire decompressor's output is one buffer starting with it.
func unmark(data mem.BufferSlice) (mem.BufferSlice, bool) {
	if len(data) == 0 {
		return data, false
	}
	first := data[0].ReadOnlyData()
	if len(first) < markerLen || !bytes.Equal(first[:markerLen], marker[:]) {
		return data, false
	}
	return append(mem.BufferSlice{mem.SliceBuffer(first[markerLen:])}, data[1:]...), true
}

// passGzip is the process's gzip: ordinary gzip, except that bytes behind
// the marker are written as they are.
type passGzip struct{}

var gzipWriters = sync.Pool{New: func() any { return gzip.NewWriter(io.Discard) }}

func (passGzip) Name() string { return "gzip" }

func (passGzip) Compress(w io.Writer) (io.WriteCloser, error) {
	return &passWriter{w: w}, nil
}

func (passGzip) Decompress(r io.Reader) (io.Reader, error) {
	return gzip.NewReader(r)
}

// passWriter decides on its first markerLen bytes whether to pass the
// rest through or to compress everything.
type passWriter struct {
	w    io.Writer
	head [markerLen]byte
	n    int          // bytes of head filled
	out  io.Writer    // once decided: w (marked: as is) or zw
	zw   *gzip.Writer // not marked: compress
}

func (p *passWriter) Write(b []byte) (int, error) {
	total := len(b)
	if p.out == nil {
		k := copy(p.head[p.n:], b)
		p.n += k
		b = b[k:]
		if p.n < markerLen {
			return total, nil
		}
		if err := p.decide(); err != nil {
			return 0, err
		}
	}
	if _, err := p.out.Write(b); err != nil {
		return 0, err
	}
	return total, nil
}

// decide passes what follows a whole marker as it is, and compresses
// anything else, the bytes taken for the head included.
func (p *passWriter) decide() error {
	if p.n == markerLen && p.head == marker {
		p.out = p.w
		return nil
	}
	p.zw = gzipWriters.Get().(*gzip.Writer)
	p.zw.Reset(p.w)
	p.out = p.zw
	_, err := p.zw.Write(p.head[:p.n])
	return err
}

func (p *passWriter) Close() error {
	if p.out == nil { // shorter than the marker: an ordinary message
		if err := p.decide(); err != nil {
			return err
		}
	}
	if p.zw == nil {
		return nil
	}
	err := p.zw.Close()
	gzipWriters.Put(p.zw)
	p.zw = nil
	return err
}
