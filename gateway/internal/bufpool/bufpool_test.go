package bufpool

import (
	"runtime/debug"
	"testing"

	"google.golang.org/grpc/mem"
)

var _ mem.BufferPool = (*Pool)(nil)

func TestGetReturnsTheAskedLengthInTheSmallestTier(t *testing.T) {
	var p Pool
	for _, c := range []struct{ n, cap int }{
		{0, 256}, {1, 256}, {256, 256}, {257, 512}, {1024, 1024}, {1025, 2048},
		{16 << 10, 16 << 10}, {32 << 10, 32 << 10}, {32<<10 + 1, 32<<10 + 1},
	} {
		b := p.Get(c.n)
		if len(*b) != c.n || cap(*b) != c.cap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", c.n, len(*b), cap(*b), c.n, c.cap)
		}
		p.Put(b)
	}
}

func TestPutKeepsOnlyTierSizedBuffers(t *testing.T) {
	var p Pool
	odd := make([]byte, 300, 300)
	p.Put(&odd) // not a tier's size: let go
	for i := 0; i < 100; i++ {
		if b := p.Get(300); cap(*b) != 512 {
			t.Fatalf("Get(300) returned a buffer of cap %d, want 512: a foreign buffer was pooled", cap(*b))
		}
	}
}

// TestBuffersAreNotCleared is the point of the package: a buffer comes
// back with its old bytes. With the collector off, a buffer put back is
// the one the same goroutine's next Get of its tier returns (sync.Pool's
// per-P slot), unless the goroutine moved to another P in between: a
// hundred tries rule that out.
func TestBuffersAreNotCleared(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var p Pool
	for range 100 {
		b := p.Get(1000)
		for i := range *b {
			(*b)[i] = 0xAB
		}
		p.Put(b)
		c := p.Get(1000)
		if c == b {
			if (*c)[999] != 0xAB {
				t.Fatal("the buffer was cleared")
			}
			return
		}
		p.Put(c)
	}
	t.Fatal("in 100 tries the pool never handed the buffer just put back")
}

func BenchmarkGetPut1KiB(b *testing.B) {
	b.Run("bufpool", func(b *testing.B) {
		for b.Loop() {
			x := Default.Get(1024)
			Default.Put(x)
		}
	})
	b.Run("grpc-default", func(b *testing.B) {
		pool := mem.DefaultBufferPool()
		for b.Loop() {
			x := pool.Get(1024)
			pool.Put(x)
		}
	})
}
