package grpcwire

import (
	"testing"
	"time"
)

func TestEncodeTimeout(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0n", 50 * time.Nanosecond: "50n", 1500 * time.Millisecond: "1500000u",
		3 * time.Hour: "10800000m", 400 * 24 * time.Hour: "34560000S", 4000 * 24 * time.Hour: "5760000M",
	} {
		if got := EncodeTimeout(d); got != want {
			t.Errorf("%v: %s, want %s", d, got, want)
		}
	}
}

// What one side encodes the other decodes: timeouts (rounded up to the
// unit), binary values padded or not, messages with '%', control bytes,
// non-ASCII and invalid UTF-8.
func TestRoundTrips(t *testing.T) {
	for _, d := range []time.Duration{time.Nanosecond, 1500 * time.Millisecond, 3 * time.Hour, 4000 * 24 * time.Hour} {
		got, err := DecodeTimeout(EncodeTimeout(d))
		if err != nil || got < d || got-d >= time.Minute && d < time.Hour {
			t.Errorf("%v: %v %v", d, got, err)
		}
	}
	for _, s := range []string{"1", "12", "123", "\x00\xff\xfe\x01"} {
		if got, err := DecodeBin(EncodeBin(s)); err != nil || got != s {
			t.Errorf("bin %q: %q %v", s, got, err)
		}
	}
	if got, err := DecodeBin("AQ=="); err != nil || got != "\x01" {
		t.Errorf("padded: %q %v", got, err)
	}
	for _, m := range []string{"plain", "100% sure", "line\nbreak", "nicht möglich", "bad \xff byte"} {
		enc := EncodeMessage(m)
		for i := 0; i < len(enc); i++ {
			if c := enc[i]; c < ' ' || c > '~' {
				t.Errorf("%q encoded with byte %#x", m, c)
			}
		}
		want := m
		if m == "bad \xff byte" {
			want = "bad \uFFFD byte" // invalid UTF-8 goes as U+FFFD, as grpc-go sends it
		}
		if got := DecodeMessage(enc); got != want {
			t.Errorf("%q: %q -> %q", m, enc, got)
		}
	}
	for _, bad := range []string{"1", "123456789S", "10x", "S"} {
		if _, err := DecodeTimeout(bad); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}
