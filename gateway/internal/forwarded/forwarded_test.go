package forwarded

import (
	"net"
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
