package h2client

import (
	"errors"

	"google.golang.org/grpc/status"
)

// Failure is how a call failed at the transport, for retry decisions as
// Envoy makes them (source/common/router/retry_state_impl.cc): a reset
// decides by wouldRetryFromReset, an answer by its grpc-status
// (wouldRetryFromHeaders).
type Failure int

const (
	// Answered: the upstream answered with a status, or the call ended on
	// our side (its context); not a transport failure.
	Answered Failure = iota
	// ConnectFailure: no connection to an endpoint could be made (Envoy's
	// ConnectionFailure reset).
	ConnectFailure
	// Refused: the upstream refused the stream, with RST_STREAM
	// REFUSED_STREAM or by not taking it before its GOAWAY (Envoy's
	// RemoteRefusedStreamReset).
	Refused
	// Reset: the upstream reset the stream, or the connection was lost
	// with the stream on it.
	Reset
	// Overflow: no stream could be had within the limits (Envoy's
	// Overflow reset, which is never retried).
	Overflow
)

// failed is a call's error with how it failed. It is a gRPC status error
// (status.FromError and status.Code read it).
type failed struct {
	st   *status.Status
	kind Failure
}

func (e *failed) Error() string              { return e.st.Err().Error() }
func (e *failed) GRPCStatus() *status.Status { return e.st }

// withFailure is st's error, carrying kind unless the upstream answered.
func withFailure(st *status.Status, kind Failure) error {
	if kind == Answered || st.Err() == nil {
		return st.Err()
	}
	return &failed{st: st, kind: kind}
}

// FailureOf tells how the call that returned err failed; Answered for an
// upstream's own status and for errors from elsewhere.
func FailureOf(err error) Failure {
	var f *failed
	if errors.As(err, &f) {
		return f.kind
	}
	return Answered
}
