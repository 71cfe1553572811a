package httpproxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/envgate/envgate/gateway/internal/route"
)

// retryableAnswer reports whether a try may be retried under the route's
// retryOn, as Envoy decides for HTTP (source/common/router/
// retry_state_impl.cc): a try with no response by wouldRetryFromReset
// (5xx, gateway-error and reset take any reset or connection failure,
// connect-failure a failed connection, refused-stream a refused stream; a
// per-try timeout only 5xx and gateway-error), an answer by
// wouldRetryFromHeaders (5xx: any 5xx; gateway-error: 502, 503, 504;
// retriable-4xx: 409; retriable-status-codes: the numbers in retryOn, as
// Istio turns them into retriable_status_codes in pilot/pkg/networking/
// core/route/retry/retry.go ConvertPolicy, parseRetryOn; the gRPC
// conditions on the response's grpc-status). code is the answer's status
// (0: none), grpc its grpc-status ("" if none).
func retryableAnswer(r route.Retries, code int, grpc string, err error, perTry bool) bool {
	hasResp := code != 0
	for _, on := range r.RetryOn {
		on = strings.TrimSpace(on)
		switch on {
		case "5xx":
			if perTry || !hasResp && err != nil || code >= 500 {
				return true
			}
		case "gateway-error":
			if perTry || !hasResp && err != nil || code == 502 || code == 503 || code == 504 {
				return true
			}
		case "reset":
			if !hasResp && err != nil && !perTry {
				return true
			}
		case "connect-failure":
			if !hasResp && isConnectFailure(err) {
				return true
			}
		case "refused-stream":
			if !hasResp && err != nil && strings.Contains(err.Error(), "REFUSED_STREAM") {
				return true
			}
		case "retriable-4xx":
			if code == http.StatusConflict {
				return true
			}
		case "retriable-status-codes":
			if code != 0 && hasStatus(r.RetryOn, code) {
				return true
			}
		case "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable":
			if hasResp && grpc == grpcCondition[on] {
				return true
			}
		default:
			// A status code alone implies retriable-status-codes (Istio
			// adds it).
			if n, ok := statusCode(on); ok && n == code {
				return true
			}
		}
	}
	return false
}

func hasStatus(on []string, code int) bool {
	for _, s := range on {
		if n, ok := statusCode(strings.TrimSpace(s)); ok && n == code {
			return true
		}
	}
	return false
}

// tryResult is the outcome of one attempt: a response's status (0: none) and
// grpc-status, or why there is none (perTry: the per-try timeout expired).
type tryResult struct {
	code   int
	grpc   string
	err    error
	perTry bool
}

// retry runs attempt until one is not to be retried under the route's
// policy (Envoy's retry state: attempts, retryOn, backoff; each retry on a
// newly picked endpoint) and returns the last one's error, or nil with a
// response. drop discards a response that is retried. gone reports a
// client that left.
func (p *Proxy) retry(rq *request, deadline time.Time, gone func() bool, attempt func() tryResult, drop func()) error {
	r := rq.dec.Action().Retries
	for n := 0; ; n++ {
		if n > 0 {
			ep, err := p.ups.Endpoint(rq.dec.Destination)
			if err != nil {
				return err
			}
			rq.ep = ep
		}
		t := attempt()
		again := retryableAnswer(r, t.code, t.grpc, t.err, t.perTry)
		if n >= r.Attempts || !rq.canRetry || gone() || deadlinePassed(deadline) || !again {
			if n > 0 && n >= r.Attempts && again && !gone() && !deadlinePassed(deadline) {
				rq.urx = true // Envoy's URX: the retries are spent
			}
			if t.perTry {
				return fmt.Errorf("per-try timeout of %v expired", r.PerTryTimeout)
			}
			return t.err
		}
		if t.code != 0 {
			drop()
		}
		timer := time.NewTimer(route.RetryBackoff(n))
		<-timer.C
		rq.retries++
	}
}

// statusCode reads a three-digit status code; every request asks, so a
// condition name costs no error value.
func statusCode(s string) (int, bool) {
	if len(s) != 3 {
		return 0, false
	}
	n := 0
	for i := 0; i < 3; i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}

// grpcCondition maps Envoy's gRPC retry conditions to grpc-status values.
var grpcCondition = map[string]string{
	"cancelled": "1", "deadline-exceeded": "4", "internal": "13", "resource-exhausted": "8", "unavailable": "14",
}

// grpcStatus is a trailers-only gRPC answer's status ("" if none).
func grpcStatus(resp *http.Response) string { return resp.Header.Get("Grpc-Status") }

// isConnectFailure reports whether err is a failure to connect (Envoy's
// UF): the dial failed, or the connection was refused or reset before
// anything was sent.
func isConnectFailure(err error) bool {
	if err == nil {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}
