package main

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawConn is an HTTP/2 client connection written frame by frame, the way an
// attacker (or a load balancer's pinger) would, with golang.org/x/net/http2's
// Framer. A reader goroutine acknowledges the gateway's SETTINGS and records
// what the tests look for.
type rawConn struct {
	nc  net.Conn
	wmu sync.Mutex // the framer's writes: the test's and the reader's acks
	fr  *http2.Framer

	mu          sync.Mutex // guards what the reader records
	goaway      bool
	goawayCode  http2.ErrCode
	goawayDebug string
	resets      map[uint32]http2.ErrCode
	statuses    map[uint32]string // grpc-status of the streams that ended with one
	httpStatus  map[uint32]string // :status of each stream's response headers
	pingAcks    int

	event chan struct{} // signalled after each frame read
	done  chan struct{} // closed when reading fails: the gateway closed the connection
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &rawConn{nc: nc, fr: http2.NewFramer(nc, nc), resets: map[uint32]http2.ErrCode{}, statuses: map[uint32]string{}, httpStatus: map[uint32]string{},
		event: make(chan struct{}, 1), done: make(chan struct{})}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	t.Cleanup(func() { nc.Close(); <-c.done })
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	c.write(func(fr *http2.Framer) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	})
	go c.read()
	return c
}

func (c *rawConn) read() {
	defer close(c.done)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if f.IsAck() {
				c.mu.Lock()
				c.pingAcks++
				c.mu.Unlock()
			}
		case *http2.GoAwayFrame:
			c.mu.Lock()
			c.goaway, c.goawayCode, c.goawayDebug = true, f.ErrCode, string(f.DebugData())
			c.mu.Unlock()
		case *http2.RSTStreamFrame:
			c.mu.Lock()
			c.resets[f.StreamID] = f.ErrCode
			c.mu.Unlock()
		case *http2.MetaHeadersFrame:
			if st := f.PseudoValue("status"); st != "" {
				c.mu.Lock()
				c.httpStatus[f.StreamID] = st
				c.mu.Unlock()
			}
			for _, hf := range f.RegularFields() {
				if hf.Name == "grpc-status" {
					c.mu.Lock()
					c.statuses[f.StreamID] = hf.Value
					c.mu.Unlock()
				}
			}
		}
		select {
		case c.event <- struct{}{}:
		default:
		}
	}
}

// write runs w under the write lock; it reports false once writing fails
// (the gateway closed the connection).
func (c *rawConn) write(w func(*http2.Framer) error) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return w(c.fr) == nil
}

// waitUntil waits up to d until cond, called under mu, holds or the gateway
// closed the connection; false when neither happened in time.
func (c *rawConn) waitUntil(d time.Duration, cond func() bool) bool {
	timeout := time.After(d)
	for {
		c.mu.Lock()
		ok := cond()
		c.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-c.event:
		case <-c.done:
			return true
		case <-timeout:
			return false
		}
	}
}

// closedWithin reports whether the gateway closed the connection in d.
func (c *rawConn) closedWithin(d time.Duration) bool {
	return c.waitUntil(d, func() bool { return false })
}

// lastGoAway is the GOAWAY the gateway sent, if any.
func (c *rawConn) lastGoAway() (code http2.ErrCode, debug string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goawayCode, c.goawayDebug, c.goaway
}

// requestFields writes a gRPC request's fields for env, and extra, with
// enc; they are never indexed, so they leave the dynamic table as it was.
func requestFields(enc *hpack.Encoder, env string, extra ...hpack.HeaderField) {
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/echo.EchoService/Call"}, {Name: ":authority", Value: "gw"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		{Name: "env", Value: env},
	}, extra...) {
		f.Sensitive = true
		_ = enc.WriteField(f)
	}
}

// openAndReset opens streams with block and resets each at once, up to n
// or until the gateway closes the connection; it returns how many.
func (c *rawConn) openAndReset(block []byte, n int) int {
	sent := 0
	for id := uint32(1); sent < n; id += 2 {
		ok := c.write(func(fr *http2.Framer) error {
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}); err != nil {
				return err
			}
			return fr.WriteRSTStream(id, http2.ErrCodeCancel)
		})
		if !ok {
			break
		}
		sent++
	}
	return sent
}

// headerBlock is HPACK for a gRPC request to env.
func headerBlock(env string) []byte {
	var buf bytes.Buffer
	requestFields(hpack.NewEncoder(&buf), env)
	return buf.Bytes()
}

// sendHeaders writes block as HEADERS and CONTINUATION frames of 16 KiB.
func (c *rawConn) sendHeaders(id uint32, block []byte, endStream bool) bool {
	return c.write(func(fr *http2.Framer) error {
		first := min(len(block), 16384)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:first],
			EndStream: endStream, EndHeaders: first == len(block)}); err != nil {
			return err
		}
		for rest := block[first:]; len(rest) > 0; {
			n := min(len(rest), 16384)
			if err := fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
		}
		return nil
	})
}
