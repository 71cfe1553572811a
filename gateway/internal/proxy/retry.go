package proxy

import (
	"context"
	"errors"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/h2client"
	"github.com/envgate/envgate/gateway/internal/route"
)

// maxReplayBytes bounds the request messages kept to send again on a retry,
// as Envoy bounds its retry buffer; a larger request is not retried. It is
// held per call until the call answers, so it stays small.
const maxReplayBytes = 128 << 10

// errPerTryTimeout ends an attempt whose per-try timeout expired.
var errPerTryTimeout = errors.New("per-try timeout")

// retryable reports whether a failed attempt may be retried under the
// route's retryOn conditions, as Envoy decides (source/common/router/
// retry_state_impl.cc): a transport failure by wouldRetryFromReset (reset,
// 5xx and gateway-error take any reset, refused-stream a refused stream,
// connect-failure a failed connection; an overflow never), an answer by
// wouldRetryFromHeaders (the gRPC conditions on its grpc-status; a
// trailers-only UNAVAILABLE has HTTP status 200, so it is no 5xx), and a
// per-try timeout only under 5xx or gateway-error (RetryStateImpl: "only
// retried if the applicable retry policy specifies either RETRY_ON_5XX or
// RETRY_ON_GATEWAY_ERROR").
func retryable(r route.Retries, err error, perTryTimeout bool) bool {
	kind := h2client.FailureOf(err)
	if kind == h2client.Overflow {
		return false
	}
	code := status.Code(err)
	for _, on := range r.RetryOn {
		switch strings.TrimSpace(on) {
		case "5xx", "gateway-error":
			if perTryTimeout || kind != h2client.Answered {
				return true
			}
		case "reset":
			if kind != h2client.Answered {
				return true
			}
		case "refused-stream":
			if kind == h2client.Refused {
				return true
			}
		case "connect-failure":
			if kind == h2client.ConnectFailure {
				return true
			}
		case "unavailable", "cancelled", "resource-exhausted", "deadline-exceeded", "internal":
			if kind == h2client.Answered && !perTryTimeout && code == grpcCondition[strings.TrimSpace(on)] {
				return true
			}
		}
	}
	return false
}

// grpcCondition maps Envoy's x-envoy-retry-grpc-on names to statuses.
var grpcCondition = map[string]codes.Code{
	"cancelled": codes.Canceled, "deadline-exceeded": codes.DeadlineExceeded, "internal": codes.Internal,
	"resource-exhausted": codes.ResourceExhausted, "unavailable": codes.Unavailable,
}

// replay keeps what the client sent so far so a retry can send it again.
// The client-to-upstream pump fills it; the handler reads it only after
// that pump has finished.
type replay struct {
	mu       sync.Mutex // the pump keeps while the handler may drop
	frames   []mem.BufferSlice
	size     int
	overflow bool
	closed   bool // the client half-closed: the request is complete
}

// keep takes a reference to a frame about to be sent.
func (r *replay) keep(data mem.BufferSlice) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.overflow {
		return
	}
	if r.size += data.Len(); r.size > maxReplayBytes {
		r.overflow = true
		r.freeLocked()
		return
	}
	data.Ref()
	r.frames = append(r.frames, data)
}

// drop gives the kept frames back once no retry can happen (the client
// got an answer), and keeps nothing more.
func (r *replay) drop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.overflow = true
	r.freeLocked()
}

func (r *replay) free() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freeLocked()
}

func (r *replay) freeLocked() {
	for _, f := range r.frames {
		f.Free()
	}
	r.frames = nil
}

// complete reports whether the whole request is kept.
func (r *replay) complete() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed && !r.overflow
}

// markClosed records that the client half-closed.
func (r *replay) markClosed() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}

// sendAll sends the kept request again on a new attempt and half-closes.
func (r *replay) sendAll(cs interface {
	SendMsg(any) error
	CloseSend() error
}) error {
	r.mu.Lock()
	frames := r.frames
	r.mu.Unlock()
	for _, f := range frames {
		f.Ref() // SendMsg frees what it sends; the replay keeps its own
		fr := frame{data: f}
		if err := cs.SendMsg(&fr); err != nil {
			fr.free()
			return err
		}
	}
	return cs.CloseSend()
}

// attemptContext bounds one attempt by the per-try timeout. Without one
// the attempt runs in the call's context: an attempt is only retried once
// its stream has ended, so it needs no cancel of its own.
func attemptContext(ctx context.Context, r route.Retries) (context.Context, context.CancelFunc) {
	if r.PerTryTimeout > 0 {
		return context.WithTimeoutCause(ctx, r.PerTryTimeout, errPerTryTimeout)
	}
	return ctx, func() {}
}
