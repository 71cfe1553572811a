package metrics

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
)

func TestMethodLabelIsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	for i := range maxMethods + 500 {
		m.CallStarted()
		m.CallDone("env1", fmt.Sprintf("/svc.S/M%d", i), codes.OK, time.Millisecond, 1, 1)
	}
	if n := testutil.CollectAndCount(m.calls); n != maxMethods+1 {
		t.Fatalf("%d call series, want %d methods and other", n, maxMethods+1)
	}
	if got := testutil.ToFloat64(m.calls.WithLabelValues("env1", "other", "OK")); got != 500 {
		t.Fatalf("other: %v, want 500", got)
	}
	// Unrouted calls take no method slot, whatever they name.
	for i := range 50 {
		m.CallStarted()
		m.CallDone("", fmt.Sprintf("/attacker.S/M%d", i), codes.Unimplemented, time.Millisecond, 0, 0)
	}
	if got := testutil.ToFloat64(m.calls.WithLabelValues("", "", "Unimplemented")); got != 50 {
		t.Fatalf("unrouted: %v, want 50 under the empty method label", got)
	}
	// Another environment has slots of its own.
	m.CallStarted()
	m.CallDone("env2", "/svc.S/M0", codes.OK, time.Millisecond, 1, 1)
	if got := testutil.ToFloat64(m.calls.WithLabelValues("env2", "/svc.S/M0", "OK")); got != 1 {
		t.Fatalf("env2's first method counted as %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.inFlight); got != 0 {
		t.Fatalf("in flight %v after every call ended", got)
	}
}
