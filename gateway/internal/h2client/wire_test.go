package h2client

import (
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// The prepared header bytes decode to the fields they stand for.
func TestFixedHeaderBytes(t *testing.T) {
	var got []hpack.HeaderField
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { got = append(got, f) })
	long := strings.Repeat("x", 300)
	block := append(append(append([]byte{}, fixedPseudo...), fixedFields...), append([]byte{0}, append(hpackString("x-long"), hpackString(long)...)...)...)
	if _, err := dec.Write(block); err != nil {
		t.Fatal(err)
	}
	want := []string{":method=POST", ":scheme=http", "content-type=application/grpc", "te=trailers",
		"grpc-accept-encoding=" + acceptEncoding, "x-long=" + long}
	if len(got) != len(want) {
		t.Fatalf("decoded %v", got)
	}
	for i, f := range got {
		if f.Name+"="+f.Value != want[i] {
			t.Errorf("field %d: %s=%s, want %s", i, f.Name, f.Value, want[i])
		}
	}
	// The first dynamic entry (index 62) must not exist.
	if _, err := dec.Write([]byte{0x80 | 62}); err == nil {
		t.Error("prepared fields added to the dynamic table")
	}
}
