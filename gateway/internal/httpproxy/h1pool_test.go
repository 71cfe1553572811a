package httpproxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"

	"github.com/envgate/envgate/gateway/internal/rawio"
)

// A request flushed for its answer is sent by the read of that answer
// (rawio's WriteRead), and only that write is held: a flush with nothing
// buffered holds nothing, so the next request's bytes are not left
// waiting for a read.
func TestFlushForAnswer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, "got "+line); err != nil {
				return
			}
		}
	}()
	p := newH1Pool(func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := net.Dial(network, addr)
		if err != nil {
			return nil, err
		}
		return rawio.Wrap(c), nil
	}, 1, 0)
	u, err := p.open(context.Background(), Endpoint{Addr: l.Addr().String()}, poolKey{})
	if err != nil {
		t.Fatal(err)
	}
	if u.io.wr == nil {
		t.Fatal("the upstream connection has no WriteRead: rawio.Wrap did not take")
	}
	_, _ = u.bw.WriteString("one\n")
	if err := u.flushForAnswer(); err != nil {
		t.Fatal(err)
	}
	if u.io.held == nil {
		t.Fatal("the request was written at once, not held for its answer's read")
	}
	if line, err := u.br.ReadString('\n'); err != nil || line != "got one\n" {
		t.Fatalf("answer %q, %v; want \"got one\\n\"", line, err)
	}
	// Nothing buffered: nothing to hold, and the next write goes at once.
	if err := u.flushForAnswer(); err != nil || u.io.hold {
		t.Fatalf("an empty flush left hold %v (err %v)", u.io.hold, err)
	}
	if _, err := u.bw.WriteString("two\n"); err != nil {
		t.Fatal(err)
	}
	if err := u.bw.Flush(); err != nil || u.io.held != nil {
		t.Fatalf("a plain flush was held (err %v)", err)
	}
	if line, err := u.br.ReadString('\n'); err != nil || line != "got two\n" {
		t.Fatalf("answer %q, %v; want \"got two\\n\"", line, err)
	}
	u.nc.Close()
	<-done
}
