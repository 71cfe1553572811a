package h2front

import (
	"bytes"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
)

// vectorConn is a TCP connection as edge's is: it writes buffers with
// writev, and counts the bytes so written.
type vectorConn struct {
	net.Conn
	vectored atomic.Int64
}

func (c *vectorConn) WriteBuffers(v *net.Buffers) (int64, error) {
	n, err := v.WriteTo(c.Conn)
	c.vectored.Add(n)
	return n, err
}

// TestLargeDataGoesFromTheCallersBuffer: a large DATA write goes to the
// socket from the caller's buffer, in a vectored write, without being
// copied into the queue, and is on the wire when the call returns: the
// caller reuses its buffer at once, and the client gets what was in it at
// each call.
func TestLargeDataGoesFromTheCallersBuffer(t *testing.T) {
	const size = 200 << 10
	s := New(http.NotFoundHandler(), Options{Relay: func(r *Request) bool {
		buf := bytes.Repeat([]byte{'a'}, size)
		if err := r.WriteHead(200, nil, nil, false); err != nil {
			return true
		}
		if err := r.WriteData(buf, false); err != nil {
			return true
		}
		for i := range buf {
			buf[i] = 'b' // reused as soon as the call returns
		}
		_ = r.WriteData(buf, true)
		return true
	}})
	var vc *vectorConn
	addr, _ := serveOne(t, s, func(nc net.Conn) net.Conn { vc = &vectorConn{Conn: nc}; return vc })
	rc := dialRaw(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	_ = rc.fr.WriteWindowUpdate(0, 4<<20)
	want := append(bytes.Repeat([]byte{'a'}, size), bytes.Repeat([]byte{'b'}, size)...)
	// Three requests, one after another: a write that finds the
	// connection's writer busy (its SETTINGS acknowledgement still going
	// out, say) copies as before, so one of six direct writes is what the
	// test asks.
	for id := uint32(1); id <= 5; id += 2 {
		rc.get(id, "/")
		var got []byte
		rc.until("the whole body", func(f http2.Frame) bool {
			if d, ok := f.(*http2.DataFrame); ok && d.StreamID == id {
				got = append(got, d.Data()...)
				return d.StreamEnded()
			}
			return false
		})
		if !bytes.Equal(got, want) {
			t.Fatalf("stream %d: got %d bytes (%d a, %d b), want %d a then %d b", id, len(got), bytes.Count(got, []byte{'a'}), bytes.Count(got, []byte{'b'}), size, size)
		}
	}
	if n := vc.vectored.Load(); n < size {
		t.Fatalf("%d bytes went in vectored writes, want at least a write's %d", n, size)
	}
}
