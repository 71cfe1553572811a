package main

import (
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// pingEvery opens a raw HTTP/2 connection with no stream, sends n PINGs
// gap apart, and reports whether the gateway answered with GOAWAY (and its
// code) instead of acknowledging them all.
func pingEvery(t *testing.T, addr string, gap time.Duration, n int) (goaway bool, code http2.ErrCode) {
	t.Helper()
	c := dialRaw(t, addr)
	for i := range n {
		if i > 0 {
			time.Sleep(gap) // the client's ping interval under test
		}
		if !c.write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{byte(i)}) }) {
			return true, http2.ErrCodeNo
		}
	}
	if !c.waitUntil(5*time.Second, func() bool { return c.pingAcks == n || c.goaway }) {
		c.mu.Lock()
		defer c.mu.Unlock()
		t.Fatalf("only %d of %d pings acknowledged", c.pingAcks, n)
	}
	code, _, goaway = c.lastGoAway()
	c.mu.Lock()
	acked := c.pingAcks
	c.mu.Unlock()
	if !goaway && acked < n {
		return true, http2.ErrCodeNo // closed without GOAWAY
	}
	return goaway, code
}

// Google's load balancer and client libraries ping idle backend connections;
// the gateway must not answer them with GOAWAY ENHANCE_YOUR_CALM as gRPC's
// default policy (5 minutes, none without a stream) would.
func TestKeepalivePingsTolerated(t *testing.T) {
	b := startBackend(t, "env1")
	gw := startGateway(t, testConfig(t, map[string][]string{"env1": {b.addr}}), nil)
	t.Run("every 5.5s with no call in flight", func(t *testing.T) {
		t.Parallel()
		if goaway, code := pingEvery(t, gw.Addrs()[0], 5500*time.Millisecond, 4); goaway {
			t.Fatalf("GOAWAY %v", code)
		}
	})
	t.Run("abusive pings still get GOAWAY", func(t *testing.T) {
		t.Parallel()
		if goaway, code := pingEvery(t, gw.Addrs()[0], 100*time.Millisecond, 5); !goaway || code != http2.ErrCodeEnhanceYourCalm {
			t.Fatalf("pings every 100ms: goaway %v %v, want ENHANCE_YOUR_CALM", goaway, code)
		}
	})
}
