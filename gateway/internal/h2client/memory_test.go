package h2client

import (
	"bytes"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/envgate/envgate/proto/echopb"
)

// A connection with a call now and then holds a few KiB of write buffers,
// not 64: a gateway routing to 1,000 environments of 3 endpoints keeps
// 3,000 such connections (make bench's environment rows). Every
// allocation is recorded (MemProfileRate 1) and the live ones attributed
// by stack.
func TestQuietConnectionHoldsSmallWriteBuffers(t *testing.T) {
	const clients = 20
	s := startServer(t)
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "env", "env1")
	for range clients {
		_, c := newClient(t, Options{}, s.addr)
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
	records := make([]runtime.MemProfileRecord, 1<<14)
	n, ok := runtime.MemProfile(records, false)
	if !ok {
		t.Fatalf("memory profile has more than %d records", len(records))
	}
	var held int64
	for _, r := range records[:n] {
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if strings.HasSuffix(f.Function, "h2client.(*writer).init") || strings.HasSuffix(f.Function, "h2client.(*conn).flushLoop") {
				held += r.InUseBytes()
				break
			}
			if !more {
				break
			}
		}
	}
	per := held / clients
	t.Logf("write buffers of %d quiet connections: %d B, %d B each", clients, held, per)
	if per == 0 {
		t.Fatal("no write buffer recorded: the attribution is broken")
	}
	if per > 16<<10 {
		t.Fatalf("a quiet connection holds %d B of write buffers, want at most 16 KiB", per)
	}
}

// An upstream connection runs two goroutines, its reader and its flusher;
// the keepalive is a timer. 3,000 upstream connections (1,000
// environments of 3 endpoints) parked 4 goroutines each before.
func TestConnectionRunsTwoGoroutines(t *testing.T) {
	const clients = 10
	s := startServer(t)
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "env", "env1")
	for range clients {
		_, c := newClient(t, Options{KeepaliveTime: time.Minute}, s.addr)
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 2); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(g, "h2client.(*conn)") {
			n++
		}
	}
	if n != 2*clients {
		t.Fatalf("%d goroutines of %d connections, want 2 each:\n%s", n, clients, buf.String())
	}
}
