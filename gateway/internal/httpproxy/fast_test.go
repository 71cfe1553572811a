package httpproxy

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// BenchmarkWriteField: eight fields, as an HTTP/1.1 request upstream has.
func BenchmarkWriteField(b *testing.B) {
	w := bufio.NewWriterSize(io.Discard, 4096)
	for b.Loop() {
		for range 8 {
			writeField(w, "x-forwarded-proto", "https")
		}
		w.Reset(io.Discard)
	}
}

// TestWriteFieldAcrossTheBuffer: a field longer than what the buffer has
// left goes out whole, between the others.
func TestWriteFieldAcrossTheBuffer(t *testing.T) {
	var out bytes.Buffer
	w := bufio.NewWriterSize(&out, 16)
	writeField(w, "a", "b")
	writeField(w, "x-long-name", "a value longer than the buffer")
	writeField(w, "c", "d")
	w.Flush()
	if got := out.String(); got != "a: b\r\nx-long-name: a value longer than the buffer\r\nc: d\r\n" {
		t.Fatalf("%q", got)
	}
}
