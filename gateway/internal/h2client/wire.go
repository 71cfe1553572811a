package h2client

import (
	"fmt"
	"net/http"

	"golang.org/x/net/http2"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// reserved reports whether a request metadata key is one the transport
// writes itself (or a pseudo-header), as gRPC's own transport decides.
func reserved(k string) bool {
	if k != "" && k[0] == ':' {
		return true
	}
	switch k {
	case "content-type", "user-agent", "grpc-message-type", "grpc-encoding",
		"grpc-message", "grpc-status", "grpc-timeout", "grpc-status-details-bin",
		"te", "grpc-accept-encoding":
		return true
	}
	return false
}

// responseMetadata reports whether a response header goes into the header or
// trailer metadata the caller sees; grpc-status-details-bin does, so a proxy
// can see it, as with gRPC's own transport.
func responseMetadata(k string) bool {
	if k == "user-agent" {
		return true
	}
	return !reserved(k) || k == "grpc-status-details-bin"
}

// finalStatus builds the call's status from its trailers, with the details
// of grpc-status-details-bin when they agree with grpc-status.
func finalStatus(code codes.Code, msg string, details []string) *status.Status {
	if code == codes.OK && msg == "" && details == nil {
		return okStatus
	}
	if len(details) == 1 {
		p := &spb.Status{}
		if err := proto.Unmarshal([]byte(details[0]), p); err == nil && codes.Code(p.GetCode()) == code {
			return status.FromProto(p)
		}
	}
	return status.New(code, msg)
}

// okStatus is shared: a Status is never changed once made.
var okStatus = status.New(codes.OK, "")

// httpStatusCode maps a non-gRPC HTTP answer to a gRPC code, as the gRPC
// spec's "HTTP to gRPC status code mapping" says.
func httpStatusCode(s int) codes.Code {
	switch s {
	case http.StatusBadRequest:
		return codes.Internal
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.Unimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return codes.Unavailable
	}
	return codes.Unknown
}

// resetStatus is the status of a stream the upstream reset, as gRPC's own
// transport maps HTTP/2 error codes.
func resetStatus(code http2.ErrCode) *status.Status {
	c := codes.Internal
	switch code {
	case http2.ErrCodeRefusedStream:
		c = codes.Unavailable
	case http2.ErrCodeCancel:
		c = codes.Canceled
	case http2.ErrCodeEnhanceYourCalm, http2.ErrCodeFlowControl:
		c = codes.ResourceExhausted
	case http2.ErrCodeInadequateSecurity:
		c = codes.PermissionDenied
	}
	return status.New(c, fmt.Sprintf("stream terminated by RST_STREAM with error code: %v", code))
}
