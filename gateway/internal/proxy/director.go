package proxy

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"

	grpcproxy "github.com/mwitkow/grpc-proxy/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/forwarded"
	"github.com/envgate/envgate/gateway/internal/route"
)

// Upstreams gives the connection of a destination, or an error when it has
// no endpoint that can take the call.
type Upstreams interface {
	Conn(route.Destination) (grpc.ClientConnInterface, error)
}

// Routes returns the routing table in force; it may change between calls.
type Routes func() *route.Table

// hopByHop are the connection-scoped headers a proxy must not forward
// (RFC 9110 section 7.6.1, and what Envoy strips).
// content-length is the client's claim about its own body: the upstream
// request is framed anew, and Envoy does not forward it on HTTP/2 either.
var hopByHop = []string{
	"connection", "keep-alive", "proxy-connection", "transfer-encoding",
	"upgrade", "te", "http2-settings", "proxy-authenticate", "proxy-authorization",
	"content-length",
}

// NewDirector routes each call by the table and hands it to the chosen
// destination's connection, with the request metadata the upstream should
// see. Refusals are gRPC statuses: UNIMPLEMENTED when no rule matches (what
// the seed's Istio gateway answers, with a message saying why), UNAVAILABLE
// when the destination has no healthy endpoint. pick returns a number in
// [0, 1) for weighted destinations.
//
// fallback, when not nil, may name another destination for one that has no
// service at all (the baseline environment of sandbox routing); the call
// then says so in its response headers.
func NewDirector(routes Routes, ups Upstreams, pick func() float64, fallback func(route.Destination) (route.Destination, bool)) grpcproxy.StreamDirector {
	return func(ctx context.Context, method string) (context.Context, grpc.ClientConnInterface, error) {
		md, owned := requestMetadata(ctx)
		table := routes()
		req := route.Request{Headers: md, Path: method, Method: "POST"}
		if a := md[":authority"]; len(a) > 0 {
			req.Authority = a[0]
		}
		dec, err := table.Decide(&req, pick())
		if err != nil {
			return nil, nil, refusal(err)
		}
		if err := answeredByGateway(dec.Action()); err != nil {
			return nil, nil, &decidedError{err: err, dec: dec}
		}
		conn, err := ups.Conn(dec.Destination)
		if err != nil && dec.Fallback(fallback) {
			conn, err = ups.Conn(dec.Destination)
		}
		if err != nil {
			return nil, nil, &decidedError{err: status.Errorf(codes.Unavailable, "%v (%s to %s)", err, dec.Rule.Source, dec.Destination), dec: dec, flag: "UH"}
		}
		r := &Routed{ClientConnInterface: conn, Decision: dec, RequestID: forwarded.RequestID()}
		r.MD = outgoing(ctx, md, owned, r.RequestID)
		applyHeaderOps(r.MD, dec.Action().RequestHeaders)
		return metadata.NewOutgoingContext(ctx, r.MD), r, nil
	}
}

// upstreamField reports whether a client's field goes upstream: not a
// pseudo-header, an x-envoy-* field or a hop-by-hop one. Nor content-type:
// the upstream request's is the call's own, which the client transports
// (h2client's, grpc-go's) set from the call and never take from metadata;
// one field fewer keeps the upstream's map of a plain call within the
// size (8) Go's maps hold in one group, 2 allocations rather than 4.
func upstreamField(k string) bool {
	return !strings.HasPrefix(k, ":") && !strings.HasPrefix(k, "x-envoy-") && k != "content-type" && !slices.Contains(hopByHop, k)
}

// requestMetadata is the request's metadata: the server stream's own when it
// gives it (grpcfront's: not to be changed, owned false), else
// metadata.FromIncomingContext's copy (owned). A copy was a map and a
// slice for each field on every call.
func requestMetadata(ctx context.Context) (md metadata.MD, owned bool) {
	if r, ok := grpc.ServerTransportStreamFromContext(ctx).(rawMetadata); ok {
		if md := r.IncomingMetadata(); md != nil {
			return md, false
		}
	}
	md, _ = metadata.FromIncomingContext(ctx)
	return md, true
}

// rawMetadata is a server transport stream that hands over the request's
// metadata without copying it (grpcfront's).
type rawMetadata interface{ IncomingMetadata() metadata.MD }

// Routed is the connection the director returns (grpc-proxy's contract
// returns one): the chosen upstream, with the routing decision and what
// goes upstream, so the handler receives them as a value.
type Routed struct {
	grpc.ClientConnInterface
	Decision route.Decision
	// MD is the request metadata for the upstream, RequestID its
	// x-request-id.
	MD        metadata.MD
	RequestID string
}

// decidedError is a call the director did not send: the handler still
// learns the decision (the environment, for the metrics) when there was
// one, and Envoy's response flag for the access log.
type decidedError struct {
	err  error
	dec  route.Decision
	flag string // NR: no route, NC: no cluster, UH: no healthy upstream
}

func (e *decidedError) Error() string { return e.err.Error() }
func (e *decidedError) Unwrap() error { return e.err }

// GRPCStatus is the status the client gets, unchanged by the wrapping.
func (e *decidedError) GRPCStatus() *status.Status { return status.Convert(e.err) }

// refusal is the status of a request the table routes nowhere: UNIMPLEMENTED
// when no rule matched (what the seed's Istio gateway answers), else
// UNAVAILABLE (Envoy's 503).
func refusal(err error) error {
	var r *route.Refusal
	if errors.As(err, &r) && r.NoRoute {
		return &decidedError{err: status.Error(codes.Unimplemented, r.Message), flag: "NR"}
	}
	return &decidedError{err: status.Error(codes.Unavailable, err.Error()), flag: "NC"}
}

// answeredByGateway is the status of a route the gateway answers itself
// (a redirect or a direct response), nil for a route with destinations.
// Envoy answers a gRPC request's local reply as trailers-only, its HTTP
// status mapped to a gRPC status (source/common/grpc/common.cc
// Common::httpToGrpcStatus via Utility::sendLocalReply) and the body as
// grpc-message.
func answeredByGateway(a *route.Action) error {
	switch {
	case a.DirectResponse != nil:
		return status.Error(HTTPToGRPC(a.DirectResponse.Status), a.DirectResponse.Body)
	case a.Redirect != nil:
		code := a.Redirect.Code
		if code == 0 {
			code = 301
		}
		return status.Errorf(HTTPToGRPC(code), "envgate: the route redirects (HTTP %d), which a gRPC client does not follow", code)
	}
	return nil
}

// HTTPToGRPC maps an HTTP status to the gRPC status a client sees, as
// gRPC's "HTTP to gRPC Status Code Mapping" and Envoy's
// Grpc::Utility::httpToGrpcStatus say.
func HTTPToGRPC(code int) codes.Code {
	switch code {
	case 400:
		return codes.Internal
	case 401:
		return codes.Unauthenticated
	case 403:
		return codes.PermissionDenied
	case 404:
		return codes.Unimplemented
	case 429, 502, 503, 504:
		return codes.Unavailable
	}
	return codes.Unknown
}

// applyHeaderOps changes md as Istio's header operations do: remove, then
// set (replace), then add (append).
func applyHeaderOps(md metadata.MD, ops route.HeaderOps) {
	for _, k := range ops.Remove {
		delete(md, k)
	}
	for k, v := range ops.Set {
		md[k] = []string{v}
	}
	for k, v := range ops.Add {
		md[k] = append(md[k], v)
	}
}

// outgoing turns the request's metadata into what goes upstream, as
// Envoy's connection manager does at the edge (conn_manager_utility.cc
// mutateRequestHeaders, cleanInternalHeaders), every client being external
// to the gateway: without pseudo-headers, hop-by-hop headers and x-envoy-*
// headers from the client; with the client's address appended to
// x-forwarded-for and in x-envoy-external-address; and with the call's own
// x-request-id in place of the client's (Istio leaves
// preserve_external_request_id off).
//
// md is changed when owned; otherwise the result is a new map that
// shares md's values (capped, so nothing is appended to them in place).
func outgoing(ctx context.Context, md metadata.MD, owned bool, requestID string) metadata.MD {
	if owned {
		for k := range md {
			if !upstreamField(k) {
				delete(md, k)
			}
		}
	} else {
		in := md
		n := 4 // the fields set below
		for k := range in {
			if upstreamField(k) {
				n++
			}
		}
		md = make(metadata.MD, n)
		for k, v := range in {
			if upstreamField(k) {
				md[k] = v[:len(v):len(v)]
			}
		}
	}
	// The four fields set here share one array.
	vals := new([4]string)
	vals[0] = requestID
	md["x-request-id"] = vals[0:1:1]
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		// x-envoy-external-address is the client's address alone, as
		// Envoy sets it (setEnvoyExternalAddress of the connection's
		// peer); x-forwarded-for appends it to what the client sent.
		ip := clientIP(p.Addr)
		vals[1], vals[2] = ip, ip
		if prior := md["x-forwarded-for"]; len(prior) > 0 {
			vals[2] = forwarded.For(prior, ip)
		}
		md["x-envoy-external-address"] = vals[1:2:2]
		md["x-forwarded-for"] = vals[2:3:3]
		vals[3] = "http"
		if p.AuthInfo != nil && p.AuthInfo.AuthType() == "tls" {
			vals[3] = "https"
		}
		md["x-forwarded-proto"] = vals[3:4:4]
	}
	return md
}

// clientIP is the client's address without its port: as the peer's
// address tells it (ClientIP, made once per connection by grpcfront), or
// from the address under it.
func clientIP(addr net.Addr) string {
	if a, ok := addr.(interface{ ClientIP() string }); ok {
		return a.ClientIP()
	}
	if u, ok := addr.(interface{ Unwrap() net.Addr }); ok {
		addr = u.Unwrap()
	}
	return forwarded.ClientIP(addr)
}
