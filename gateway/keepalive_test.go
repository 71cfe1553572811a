package main

import (
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// pingEvery opens a raw HTTP/2 connection with no stream, sends n PINGs
// gap apart, and reports whether the gateway answered with GOAWAY (and its
// code) instead of acknowledging them all.
func pingEvery(t *testing.T, addr string, gap time.Duration, n int) (goaway bool, code http2.ErrCode) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	var wmu sync.Mutex // the framer's writes come from two goroutines
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	frames := make(chan http2.Frame, 100)
	go func() {
		defer close(frames)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
				wmu.Lock()
				_ = fr.WriteSettingsAck()
				wmu.Unlock()
			}
			frames <- f
		}
	}()
	acks := 0
	for i := range n {
		if i > 0 {
			time.Sleep(gap) // the client's ping interval under test
		}
		wmu.Lock()
		err := fr.WritePing(false, [8]byte{byte(i)})
		wmu.Unlock()
		if err != nil {
			return true, http2.ErrCodeNo
		}
	}
	deadline := time.After(5 * time.Second)
	for acks < n {
		select {
		case f, ok := <-frames:
			if !ok {
				return true, http2.ErrCodeNo
			}
			switch f := f.(type) {
			case *http2.PingFrame:
				if f.IsAck() {
					acks++
				}
			case *http2.GoAwayFrame:
				return true, f.ErrCode
			}
		case <-deadline:
			t.Fatalf("only %d of %d pings acknowledged", acks, n)
		}
	}
	return false, 0
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
