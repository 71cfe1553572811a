package h2client

import (
	"runtime"
	"strings"
	"testing"

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
