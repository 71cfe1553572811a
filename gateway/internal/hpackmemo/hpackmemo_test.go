package hpackmemo

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// The memo writes byte for byte what the encoder alone writes, over
// blocks of fields that repeat (as a connection's calls do), fields new
// each time (indexed: they add to the table and evict), sensitive ones,
// values too large to remember, and table size changes between blocks;
// and a decoder reads the fields back.
func TestSameBytesAsTheEncoder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	repeat := []hpack.HeaderField{
		{Name: ":path", Value: "/echo.EchoService/Call"}, {Name: ":authority", Value: "app-service.env1:50051"},
		{Name: "user-agent", Value: "grpc-go/1.85.0"}, {Name: "env", Value: "env1"}, {Name: "env", Value: "env2"},
		{Name: "x-forwarded-for", Value: "203.0.113.7"}, {Name: "x-forwarded-proto", Value: "https"},
		{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"}, {Name: "grpc-status", Value: "0"},
		{Name: "x-long", Value: string(bytes.Repeat([]byte("v"), 300))},
	}
	var memoBuf, plainBuf bytes.Buffer
	memo := New(&memoBuf, 4) // few slots: fields share them
	plain := hpack.NewEncoder(&plainBuf)
	var got []hpack.HeaderField
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { got = append(got, f) })
	for block := range 5000 {
		switch rng.IntN(50) {
		case 0:
			v := uint32(rng.IntN(4097))
			memo.SetMaxDynamicTableSize(v)
			plain.SetMaxDynamicTableSize(v)
		case 1:
			v := uint32(256 + rng.IntN(3841))
			memo.SetMaxDynamicTableSizeLimit(v)
			plain.SetMaxDynamicTableSizeLimit(v)
		}
		memoBuf.Reset()
		plainBuf.Reset()
		var want []hpack.HeaderField
		for range 1 + rng.IntN(10) {
			var f hpack.HeaderField
			switch r := rng.IntN(10); {
			case r < 7:
				f = repeat[rng.IntN(len(repeat))]
			case r < 9:
				f = hpack.HeaderField{Name: "x-request-id", Value: fmt.Sprintf("id-%d-%d", block, rng.Int())}
			default:
				f = hpack.HeaderField{Name: "authorization", Value: fmt.Sprint("secret-", rng.IntN(3)), Sensitive: true}
			}
			memo.WriteField(f)
			_ = plain.WriteField(f)
			want = append(want, f)
		}
		if !bytes.Equal(memoBuf.Bytes(), plainBuf.Bytes()) {
			t.Fatalf("block %d: memo wrote %x, the encoder %x", block, memoBuf.Bytes(), plainBuf.Bytes())
		}
		got = got[:0]
		if _, err := dec.Write(memoBuf.Bytes()); err != nil {
			t.Fatalf("block %d: %v", block, err)
		}
		if err := dec.Close(); err != nil {
			t.Fatalf("block %d: %v", block, err)
		}
		if len(got) != len(want) {
			t.Fatalf("block %d: decoded %d fields, want %d", block, len(got), len(want))
		}
		for i := range want {
			if got[i].Name != want[i].Name || got[i].Value != want[i].Value {
				t.Fatalf("block %d field %d: %v, want %v", block, i, got[i], want[i])
			}
		}
	}
	// The repeated fields were remembered: the memo was used, not only
	// passed through.
	if memo.memo == nil {
		t.Fatal("nothing was remembered")
	}
}

// A field the table holds is written from the memo; a block of them
// allocates nothing.
func TestRepeatedFieldIsRemembered(t *testing.T) {
	var buf bytes.Buffer
	e := New(&buf, 32)
	f := hpack.HeaderField{Name: "grpc-status", Value: "0"}
	for range 2 { // the first adds it to the table, the second finds it
		buf.Reset()
		e.WriteField(f)
	}
	if s := e.slot(f); s.gen != e.gen || s.name != f.Name || s.value != f.Value || buf.Len() != int(s.n) || !bytes.Equal(buf.Bytes(), s.b[:s.n]) {
		t.Fatalf("not remembered: slot %+v, wrote %x", *s, buf.Bytes())
	}
	block := []hpack.HeaderField{{Name: ":path", Value: "/echo.EchoService/Call"}, {Name: "env", Value: "env1"}, f}
	if a := testing.AllocsPerRun(100, func() {
		buf.Reset()
		for _, f := range block {
			e.WriteField(f)
		}
	}); a != 0 {
		t.Errorf("%v allocations a block", a)
	}
}

func BenchmarkRequestBlock(b *testing.B) {
	block := []hpack.HeaderField{
		{Name: ":path", Value: "/echo.EchoService/Call"}, {Name: ":authority", Value: "127.0.0.1:19054"},
		{Name: "user-agent", Value: "h2load nghttp2/1.64.0"}, {Name: "env", Value: "env1"},
		{Name: "x-forwarded-for", Value: "127.0.0.1"}, {Name: "x-envoy-external-address", Value: "127.0.0.1"},
		{Name: "x-forwarded-proto", Value: "http"}, {Name: "x-request-id", Value: "0b8e4a3c-54c4-4b1e-9d1c-3f0f9ad0e2a1", Sensitive: true},
	}
	var buf bytes.Buffer
	b.Run("encoder", func(b *testing.B) {
		e := hpack.NewEncoder(&buf)
		for b.Loop() {
			buf.Reset()
			for _, f := range block {
				_ = e.WriteField(f)
			}
		}
	})
	b.Run("memo", func(b *testing.B) {
		e := New(&buf, 32)
		for b.Loop() {
			buf.Reset()
			for _, f := range block {
				e.WriteField(f)
			}
		}
	})
}
