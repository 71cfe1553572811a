package forwarded

import (
	"net"
	"strings"
	"testing"
)

type strAddr string

func (a strAddr) Network() string { return "tcp" }
func (a strAddr) String() string  { return string(a) }

// ClientIP is the address as x-envoy-external-address carries it: no
// port, and IPv6 without brackets.
func TestClientIP(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 443}, "203.0.113.7"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 443}, "2001:db8::1"},
		{strAddr("198.51.100.2:51234"), "198.51.100.2"},
		{strAddr("[2001:db8::2]:51234"), "2001:db8::2"},
		{strAddr("pipe"), "pipe"},
	} {
		if got := ClientIP(tc.addr); got != tc.want {
			t.Errorf("ClientIP(%v) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

// TestRequestIDIsAUUIDv4: 36 characters, hyphens at 8, 13, 18 and 23,
// lower-case hex elsewhere, version 4 and the RFC 4122 variant, and no
// two alike.
func TestRequestIDIsAUUIDv4(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := RequestID()
		if len(id) != 36 {
			t.Fatalf("%q: %d characters", id, len(id))
		}
		for i := range len(id) {
			c := id[i]
			switch i {
			case 8, 13, 18, 23:
				if c != '-' {
					t.Fatalf("%q: %q at %d", id, c, i)
				}
			default:
				if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
					t.Fatalf("%q: %q at %d", id, c, i)
				}
			}
		}
		if id[14] != '4' || !strings.ContainsRune("89ab", rune(id[19])) {
			t.Fatalf("%q: not version 4 with the RFC 4122 variant", id)
		}
		if seen[id] {
			t.Fatalf("%q twice", id)
		}
		seen[id] = true
	}
}

func BenchmarkRequestID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		RequestID()
	}
}
