package h2front

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/envgate/envgate/gateway/internal/bufpool"
)

func newPipe() *pipe {
	p := &pipe{}
	p.cond.L = &p.mu
	return p
}

// body is n bytes of a recognisable body.
func body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

// TestTakeHandsOverWholeChunks: a message after its 5-byte prefix, 64 KiB
// in all in DATA frames of 16 KiB, is taken as the four chunks the frames
// filled, without a copy: the bytes taken are the chunks' own.
func TestTakeHandsOverWholeChunks(t *testing.T) {
	p := newPipe()
	want := body(64 << 10)
	for b := want; len(b) > 0; {
		n := min(len(b), 16<<10)
		p.write(b[:n])
		b = b[n:]
	}
	p.closeWith(io.EOF, nil)
	var prefix [5]byte
	if n, err := p.read(prefix[:]); n != 5 || err != nil {
		t.Fatalf("read the prefix: %d, %v", n, err)
	}
	var got []byte
	taken := 0
	for left := 64<<10 - 5; left > 0; {
		buf, off, err := p.take(left)
		if buf == nil {
			t.Fatalf("take(%d) with %d bytes in: nil, %v; want a chunk", left, p.n, err)
		}
		if cap(*buf) != 16<<10 {
			t.Errorf("chunk of cap %d, want %d", cap(*buf), 16<<10)
		}
		got = append(got, (*buf)[off:]...)
		left -= len(*buf) - off
		taken++
	}
	if taken != 4 {
		t.Errorf("took %d chunks, want 4", taken)
	}
	if !bytes.Equal(got, want[5:]) {
		t.Fatal("the bytes taken are not the message")
	}
	if n, err := p.read(prefix[:]); n != 0 || err != io.EOF {
		t.Fatalf("after the message: %d, %v; want the end", n, err)
	}
}

// TestTakeLeavesWhatItMustCopy: take hands nothing over when the bytes in
// are more than asked (the next message's are in the same chunk), when the
// chunk is small, or when they fill less than half of it; read then
// copies, and nothing is lost.
func TestTakeLeavesWhatItMustCopy(t *testing.T) {
	cases := []struct {
		name        string
		write, read int
		max         int
	}{
		{"more than asked", 16 << 10, 0, 100},
		{"small chunk", 2 << 10, 0, 1 << 20},
		{"mostly read", 3000, 2000, 1 << 20},
	}
	for _, c := range cases {
		p := newPipe()
		want := body(c.write)
		p.write(want)
		got := make([]byte, c.read)
		if c.read > 0 {
			if n, _ := p.read(got); n != c.read {
				t.Fatalf("%s: read %d, want %d", c.name, n, c.read)
			}
		}
		if buf, _, err := p.take(c.max); buf != nil || err != nil {
			t.Errorf("%s: take handed over %d bytes of a chunk of %d (err %v)", c.name, len(*buf), cap(*buf), err)
			continue
		}
		rest := make([]byte, c.write)
		n, _ := p.read(rest)
		if !bytes.Equal(append(got, rest[:n]...), want) {
			t.Errorf("%s: read after a refused take lost bytes", c.name)
		}
	}
}

// TestChunksHoldAtMostAChunkMore: a client sending 1-byte DATA frames
// fills small chunks first and then 16 KiB ones, so what the pipe holds is
// its bytes and at most one chunk's room, not a buffer per frame.
func TestChunksHoldAtMostAChunkMore(t *testing.T) {
	p := newPipe()
	const n = 65535 // a stream's default window
	for i := range n {
		p.write([]byte{byte(i)})
	}
	held := 0
	for _, c := range p.chunks {
		held += cap(*c)
	}
	if held > n+chunkMax {
		t.Errorf("%d bytes in %d chunks take %d, want at most %d", n, len(p.chunks), held, n+chunkMax)
	}
	if len(p.chunks) > n/chunkMax+8 {
		t.Errorf("%d chunks for %d bytes", len(p.chunks), n)
	}
}

// TestReadsAndTakesKeepTheOrder writes random pieces and reads them back
// with reads and takes of random sizes: the bytes come out as they went
// in.
func TestReadsAndTakesKeepTheOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		p := newPipe()
		want := body(r.IntN(200 << 10))
		for b := want; len(b) > 0; {
			n := min(len(b), 1+r.IntN(16<<10))
			p.write(b[:n])
			b = b[n:]
		}
		p.closeWith(io.EOF, nil)
		var got []byte
		for {
			if r.IntN(2) == 0 {
				buf, off, err := p.take(1 + r.IntN(64<<10))
				if err == io.EOF {
					break
				}
				if buf != nil {
					got = append(got, (*buf)[off:]...)
					continue
				}
			}
			b := make([]byte, 1+r.IntN(40<<10))
			n, err := p.read(b)
			got = append(got, b[:n]...)
			if err == io.EOF {
				break
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: %d bytes came out of %d, not as they went in", round, len(got), len(want))
		}
	}
}

// TestCloseDropsWhatWasNotRead: a reset drops the chunks not read and
// says how many bytes they held, for the connection's window.
func TestCloseDropsWhatWasNotRead(t *testing.T) {
	p := newPipe()
	p.write(body(40 << 10))
	b := make([]byte, 1000)
	p.read(b)
	if dropped := p.closeWith(errStreamReset, nil); dropped != 40<<10-1000 {
		t.Errorf("dropped %d, want %d", dropped, 40<<10-1000)
	}
	if len(p.chunks) != 0 || p.n != 0 {
		t.Errorf("after the reset: %d chunks, %d bytes", len(p.chunks), p.n)
	}
	if _, err := p.read(b); err != errStreamReset {
		t.Errorf("read after the reset: %v", err)
	}
}

// TestSmallMessagesReuseOneChunk: a stream of small messages, each read
// before the next arrives (a bidi call's ping-pong), reuses the one chunk
// the first took, rather than one from the pool for each.
func TestSmallMessagesReuseOneChunk(t *testing.T) {
	p := newPipe()
	msg := body(100)
	b := make([]byte, 100)
	p.write(msg)
	p.read(b)
	first := p.chunks[0]
	for i := range 100 {
		p.write(msg)
		if n, _ := p.read(b); n != 100 || !bytes.Equal(b, msg) {
			t.Fatalf("message %d: read %d bytes, or not the message", i, n)
		}
		if len(p.chunks) != 1 || p.chunks[0] != first {
			t.Fatalf("message %d: %d chunks, the first kept: %v", i, len(p.chunks), len(p.chunks) > 0 && p.chunks[0] == first)
		}
	}
	if cap(*first) != 256 {
		t.Errorf("a 100 B message took a chunk of %d", cap(*first))
	}
}

// BenchmarkPipeMessage64KiB moves a 64 KiB request message (its prefix
// and 16 KiB frames, as a client sends them) through a body: taken as the
// chunks it arrived in, as RecvMsg does, or copied out into pooled
// buffers of 32 KiB, as it did before take.
func BenchmarkPipeMessage64KiB(b *testing.B) {
	frame := body(16 << 10)
	run := func(b *testing.B, recv func(p *pipe, left int)) {
		b.SetBytes(64 << 10)
		for b.Loop() {
			p := newPipe()
			for range 4 {
				p.write(frame)
			}
			p.closeWith(io.EOF, nil)
			var prefix [5]byte
			p.read(prefix[:])
			recv(p, 64<<10-5)
			p.read(prefix[:])
		}
	}
	b.Run("take", func(b *testing.B) {
		run(b, func(p *pipe, left int) {
			for left > 0 {
				buf, off, _ := p.take(left)
				left -= len(*buf) - off
				bufpool.Default.Put(buf)
			}
		})
	})
	b.Run("copy", func(b *testing.B) {
		run(b, func(p *pipe, left int) {
			for left > 0 {
				buf := bufpool.Default.Get(min(left, 32<<10))
				n, _ := io.ReadFull(readerFunc(p.read), *buf)
				left -= n
				bufpool.Default.Put(buf)
			}
		})
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
