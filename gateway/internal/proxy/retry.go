package proxy

import (
	"context"
	"errors"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"

	"github.com/envgate/envgate/gateway/internal/route"
)

// maxReplayBytes bounds the request messages kept to send again on a retry,
// as Envoy bounds its retry buffer; a larger request is not retried. It is
// held per call until the call answers, so it stays small.
const maxReplayBytes = 128 << 10

// errPerTryTimeout ends an attempt whose per-try timeout expired.
var errPerTryTimeout = errors.New("per-try timeout")

// retryable reports whether a failed attempt may be retried under the
// route's retryOn conditions (Istio's names; the gRPC ones by status, the
// connection ones as the UNAVAILABLE grpc-go reports for them).
func retryable(r route.Retries, code codes.Code) bool {
	for _, on := range r.RetryOn {
		switch strings.TrimSpace(on) {
		case "unavailable", "connect-failure", "refused-stream", "reset", "5xx", "gateway-error":
			if code == codes.Unavailable {
				return true
			}
		case "cancelled":
			if code == codes.Canceled {
				return true
			}
		case "resource-exhausted":
			if code == codes.ResourceExhausted {
				return true
			}
		case "deadline-exceeded":
			if code == codes.DeadlineExceeded {
				return true
			}
		case "internal":
			if code == codes.Internal {
				return true
			}
		}
	}
	return false
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
