package h2client

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
)

// Outlier is the passive health check of a destination's endpoints,
// Envoy's outlier detection as Istio's DestinationRule configures it
// (trafficPolicy.outlierDetection): an endpoint whose calls fail that many
// times in a row is ejected, taking no calls for BaseEjectionTime times the
// number of its ejections (at most MaxEjectionTime), while fewer than
// MaxEjectionPercent of the endpoints are ejected.
//
// What counts follows Envoy's router (source/common/router/router.cc):
// the response headers report a success, except a trailers-only answer,
// whose grpc-status counts as the HTTP status gRPC maps it to
// (Filter::onUpstreamHeaders: UNAVAILABLE 503 and DEADLINE_EXCEEDED 504 are
// gateway errors, INTERNAL, UNKNOWN, DATA_LOSS and UNIMPLEMENTED other
// 5xx); a reset stream or a lost connection is a connect failure, 503
// (Filter::onUpstreamReset); a call that times out before its response
// headers is a 504 (Filter::onResponseTimeout). A call the client
// cancelled counts for nothing.
type Outlier struct {
	// ConsecutiveGatewayErrors ejects after this many gateway errors in
	// a row; ConsecutiveErrors after this many 5xx-like ones (gateway
	// errors included). 0 takes the default, negative turns it off.
	ConsecutiveGatewayErrors, ConsecutiveErrors int
	BaseEjectionTime, MaxEjectionTime           time.Duration
	MaxEjectionPercent                          int
	// Interval is how often an endpoint that stayed in takes one off its
	// ejection count (Envoy decrements it at each interval).
	Interval time.Duration
}

// DefaultOutlier is envgate's passive health check when nothing is
// configured: 5 gateway errors in a row eject an endpoint for 30 s,
// Envoy's defaults for consecutive_gateway_failure, base_ejection_time,
// max_ejection_time (300 s), interval (10 s) and max_ejection_percent
// (10%: with Envoy's rule, ejected share before this ejection below the
// maximum, one endpoint of up to ten can always be ejected). Consecutive
// 5xx answers are not counted by default: an application's INTERNAL is not
// the endpoint's fault.
var DefaultOutlier = Outlier{
	ConsecutiveGatewayErrors: 5, ConsecutiveErrors: -1,
	BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second,
	MaxEjectionPercent: 10, Interval: 10 * time.Second,
}

func (o Outlier) withDefaults() Outlier {
	d := DefaultOutlier
	if o.ConsecutiveGatewayErrors != 0 {
		d.ConsecutiveGatewayErrors = o.ConsecutiveGatewayErrors
	}
	if o.ConsecutiveErrors != 0 {
		d.ConsecutiveErrors = o.ConsecutiveErrors
	}
	if o.BaseEjectionTime > 0 {
		d.BaseEjectionTime = o.BaseEjectionTime
	}
	if o.MaxEjectionTime > 0 {
		d.MaxEjectionTime = o.MaxEjectionTime
	}
	d.MaxEjectionTime = max(d.MaxEjectionTime, d.BaseEjectionTime)
	if o.MaxEjectionPercent != 0 {
		d.MaxEjectionPercent = min(max(o.MaxEjectionPercent, 0), 100)
	}
	if o.Interval > 0 {
		d.Interval = o.Interval
	}
	return d
}

// result is one observation of an endpoint.
type result int

const (
	success      result = iota
	serverError         // a 5xx other than a gateway error
	gatewayError        // 502, 503, 504: resets, lost connections, timeouts, UNAVAILABLE
)

// health counts an endpoint's consecutive failures; written by the calls
// that end on it.
type health struct {
	gateway, errors atomic.Int32
}

// ejection is an endpoint's ejection state; under Client.mu.
type ejection struct {
	active bool
	count  int       // ejections not yet forgiven
	since  time.Time // of the last ejection or return
	timer  *time.Timer
}

func (e *ejection) stop() {
	if e.timer != nil {
		e.timer.Stop()
	}
}

// headersResult is what response headers report: a success, or for a
// trailers-only answer its status as Envoy maps it
// (Grpc::Utility::grpcToHttpStatus).
func headersResult(trailersOnly bool, code codes.Code) result {
	if !trailersOnly {
		return success
	}
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded:
		return gatewayError
	case codes.Unknown, codes.Internal, codes.DataLoss, codes.Unimplemented:
		return serverError
	}
	return success
}

// endResult is what a call that ended without response headers reports:
// the upstream reset it or the connection was lost (a gateway error), or
// its context ended (a timeout is a gateway error, a cancellation nothing).
func endResult(ctx context.Context, local bool) (result, bool) {
	if !local {
		return gatewayError, true
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return gatewayError, true
	}
	return success, false
}

// report records r for c's endpoint and ejects it when a consecutive
// count reaches its threshold.
func (c *conn) report(r result) {
	h := &c.ep.health
	if r == success {
		// Stores only when needed: the counters are shared by every call
		// to the endpoint.
		if h.gateway.Load() != 0 {
			h.gateway.Store(0)
		}
		if h.errors.Load() != 0 {
			h.errors.Store(0)
		}
		return
	}
	cl := c.cl
	if cl == nil {
		return
	}
	o := &cl.opts.Outlier
	if r == gatewayError {
		if n := h.gateway.Add(1); o.ConsecutiveGatewayErrors > 0 && int(n) == o.ConsecutiveGatewayErrors {
			cl.eject(c.ep, "consecutive gateway errors", int(n))
		}
	} else if h.gateway.Load() != 0 {
		h.gateway.Store(0)
	}
	if n := h.errors.Add(1); o.ConsecutiveErrors > 0 && int(n) == o.ConsecutiveErrors {
		cl.eject(c.ep, "consecutive 5xx errors", int(n))
	}
}

// eject takes ep out of the ready set for its ejection time, unless as
// many endpoints as MaxEjectionPercent allows are out already (Envoy's
// DetectorImpl::ejectHost: ejected share before this one below the
// maximum).
func (cl *Client) eject(ep *endpoint, why string, n int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.closed || cl.eps[ep.addr] != ep || ep.ejection.active {
		return
	}
	o := &cl.opts.Outlier
	ejected := 0
	for _, e := range cl.eps {
		if e.ejection.active {
			ejected++
		}
	}
	if 100*ejected >= o.MaxEjectionPercent*len(cl.eps) {
		cl.opts.Log.Warn("upstream endpoint not ejected: too many are already",
			"addr", ep.addr, "reason", why, "errors", n, "ejected", ejected, "endpoints", len(cl.eps), "max_percent", o.MaxEjectionPercent)
		return
	}
	e := &ep.ejection
	now := time.Now()
	if !e.since.IsZero() && o.Interval > 0 {
		// One ejection forgiven per interval spent in the set.
		e.count = max(0, e.count-int(now.Sub(e.since)/o.Interval))
	}
	e.count++
	d := min(o.BaseEjectionTime*time.Duration(e.count), o.MaxEjectionTime)
	e.active, e.since = true, now
	e.timer = time.AfterFunc(d, func() { cl.uneject(ep) })
	cl.opts.Log.Warn("upstream endpoint ejected", "addr", ep.addr, "reason", why, "errors", n, "for", d)
	if cl.opts.OnEject != nil {
		cl.opts.OnEject()
	}
	cl.changedLocked()
}

// uneject returns ep to the set with its counts cleared.
func (cl *Client) uneject(ep *endpoint) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	ep.ejection.active, ep.ejection.since = false, time.Now()
	ep.health.gateway.Store(0)
	ep.health.errors.Store(0)
	if !cl.closed {
		cl.opts.Log.Info("upstream endpoint returned after ejection", "addr", ep.addr)
		cl.changedLocked()
	}
}

// Ejected lists the endpoints ejected now, for views and tests.
func (cl *Client) Ejected() []string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var out []string
	for addr, ep := range cl.eps {
		if ep.ejection.active {
			out = append(out, addr)
		}
	}
	return out
}
