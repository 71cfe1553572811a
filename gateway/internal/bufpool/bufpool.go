// Package bufpool is a buffer pool, of the shape of gRPC's mem.BufferPool,
// that does not clear the buffers it hands out. gRPC's default pool clears
// a buffer's whole capacity on every Get: 4 KiB for a 1 KiB message, which
// was a tenth of a 1 KiB stream's CPU in envgate's upstream client. Its
// callers overwrite every byte they take at once (a copy out of a frame, a
// read that fails or fills the buffer), so the clearing protects nothing
// there.
package bufpool

import (
	"math/bits"
	"sync"
)

// Tiers are the powers of two from minShift to maxShift: a buffer is at
// most twice what was asked. Larger ones are made for the caller and let
// go on Put.
const (
	minShift = 8  // 256 B
	maxShift = 15 // 32 KiB: a frame's payload at the default frame size fits twice
)

// Pool hands out buffers of the asked length; the zero value is ready.
type Pool struct {
	tiers [maxShift - minShift + 1]sync.Pool
}

// Default is the process's pool.
var Default = &Pool{}

// tier is the index of the smallest tier holding n bytes, or -1.
func tier(n int) int {
	if n <= 1<<minShift {
		return 0
	}
	s := bits.Len(uint(n - 1))
	if s > maxShift {
		return -1
	}
	return s - minShift
}

// Get returns a buffer of length n; its bytes are whatever it held.
func (p *Pool) Get(n int) *[]byte {
	t := tier(n)
	if t < 0 {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.tiers[t].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(t+minShift))
	return &b
}

// Put returns a buffer Get made; others (grown, or past the largest tier)
// are let go.
func (p *Pool) Put(b *[]byte) {
	c := cap(*b)
	t := tier(c)
	if t < 0 || c != 1<<(t+minShift) {
		return
	}
	p.tiers[t].Put(b)
}
