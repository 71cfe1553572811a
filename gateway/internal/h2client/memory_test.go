package h2client

import (
	"bytes"
	"context"
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
	quietClients(t, clients)
	held := liveBytesAllocatedIn(t, "h2client.(*writer).init", "h2client.(*conn).flushLoop")
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

// quietClients records every allocation (MemProfileRate 1, until the test
// ends) and opens n client connections, one call on each; it returns the
// calls' context and the clients.
func quietClients(t *testing.T, n int) (context.Context, []echopb.EchoServiceClient) {
	t.Helper()
	s := startServer(t)
	rate := runtime.MemProfileRate
	t.Cleanup(func() { runtime.MemProfileRate = rate })
	runtime.MemProfileRate = 1
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "env", "env1")
	var cs []echopb.EchoServiceClient
	for range n {
		_, c := newClient(t, Options{}, s.addr)
		if _, err := c.Call(ctx, &echopb.EchoRequest{}); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	return ctx, cs
}

// liveBytesAllocatedIn is the heap in use allocated under any of the
// functions named (suffixes of their full names), by the memory profile.
func liveBytesAllocatedIn(t *testing.T, funcs ...string) int64 {
	t.Helper()
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
	stack:
		for {
			f, more := frames.Next()
			for _, fn := range funcs {
				if strings.HasSuffix(f.Function, fn) {
					held += r.InUseBytes()
					break stack
				}
			}
			if !more {
				break
			}
		}
	}
	return held
}

// A connection's read buffer is 4 KiB while its frames fit in it, and
// grows to 32 KiB once a larger one comes: 3,000 upstream connections of
// quiet environments held 32 KiB each before.
func TestReadBufferGrowsOnlyForLargeFrames(t *testing.T) {
	const clients = 20
	ctx, cs := quietClients(t, clients)
	per := liveBytesAllocatedIn(t, "h2client.(*reader).init", "h2client.(*reader).grow") / clients
	t.Logf("read buffer of a quiet connection: %d B", per)
	if per == 0 || per > 8<<10 {
		t.Fatalf("a quiet connection holds %d B of read buffer, want 4 KiB", per)
	}
	// A large answer on each: the buffers grow.
	for _, c := range cs {
		if _, err := c.Call(ctx, &echopb.EchoRequest{ResponseSize: 64 << 10}); err != nil {
			t.Fatal(err)
		}
	}
	per = liveBytesAllocatedIn(t, "h2client.(*reader).init", "h2client.(*reader).grow") / clients
	t.Logf("read buffer after a 64 KiB answer: %d B", per)
	if per < 32<<10 {
		t.Fatalf("after a 64 KiB answer a connection holds %d B of read buffer, want 32 KiB", per)
	}
}
