package proxy

import (
	"context"
	"net"
	"slices"
	"strings"

	grpcproxy "github.com/mwitkow/grpc-proxy/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

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

// maxForwardedFor bounds the x-forwarded-for the upstream gets: the
// client's own entries are kept from the right (the ones nearest the
// gateway, the only ones a hop vouched for) while they fit, then the
// client's address is appended.
const maxForwardedFor = 1024

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
		md, _ := metadata.FromIncomingContext(ctx) // a copy: it becomes the outgoing metadata
		table := routes()
		req := route.Request{Headers: md, Path: method}
		if a := md[":authority"]; len(a) > 0 {
			req.Authority = a[0]
		}
		rule, ok := table.Route(&req)
		if !ok {
			h := table.EnvHeader()
			return nil, nil, status.Error(codes.Unimplemented,
				"envgate: "+(&route.NoRouteError{Header: h, Values: md[h], Path: method}).Error())
		}
		dest, ok := rule.Action.Pick(pick())
		if !ok {
			return nil, nil, status.Errorf(codes.Unavailable, "no healthy upstream (route %s has no destination with a weight)", rule.Source)
		}
		if dest.NoService != "" {
			// Istio leaves such a host as written, Envoy finds no cluster
			// for it and answers 503 (NC).
			return nil, nil, status.Errorf(codes.Unavailable, "envgate: route %s sends to %q, which names no service (Istio expands only short names; write %s.svc.cluster.local)",
				rule.Source, dest.NoService, dest.NoService)
		}
		routedTo(ctx, dest.Namespace, &rule.Action)
		conn, err := ups.Conn(dest)
		if err != nil && fallback != nil {
			if fb, ok := fallback(dest); ok {
				usedBaseline(ctx, fb.Namespace)
				dest = fb
				conn, err = ups.Conn(dest)
			}
		}
		if err != nil {
			return nil, nil, status.Errorf(codes.Unavailable, "%v (%s to %s)", err, rule.Source, dest)
		}
		out := outgoing(ctx, md)
		applyHeaderOps(out, rule.Action.RequestHeaders)
		sends(ctx, out)
		return metadata.NewOutgoingContext(ctx, out), conn, nil
	}
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
func outgoing(ctx context.Context, md metadata.MD) metadata.MD {
	for k := range md {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "x-envoy-") {
			delete(md, k)
		}
	}
	if c, ok := ctx.Value(callKey{}).(*call); ok && c.requestID != "" {
		md["x-request-id"] = []string{c.requestID}
	} else {
		md["x-request-id"] = []string{newRequestID()}
	}
	for _, k := range hopByHop {
		delete(md, k)
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr := p.Addr
		if u, ok := addr.(interface{ Unwrap() net.Addr }); ok {
			addr = u.Unwrap()
		}
		var ip string
		if a, ok := addr.(*net.TCPAddr); ok {
			ip = a.IP.String()
		} else {
			ip = addr.String()
			if host, _, err := net.SplitHostPort(ip); err == nil {
				ip = host
			}
		}
		if prior := md["x-forwarded-for"]; len(prior) > 0 {
			ip = forwardedFor(prior, ip)
		}
		md["x-envoy-external-address"] = []string{ip}
		md["x-forwarded-for"] = []string{ip}
		proto := "http"
		if p.AuthInfo != nil && p.AuthInfo.AuthType() == "tls" {
			proto = "https"
		}
		md["x-forwarded-proto"] = []string{proto}
	}
	return md
}

// forwardedFor appends ip to the client's x-forwarded-for entries, keeping
// only the rightmost entries that fit in maxForwardedFor bytes.
func forwardedFor(prior []string, ip string) string {
	all := strings.Join(prior, ",")
	budget := maxForwardedFor - len(ip)
	var kept []string
	for size := 0; all != ""; {
		i := strings.LastIndexByte(all, ',')
		entry := strings.TrimSpace(all[i+1:])
		all = all[:max(i, 0)]
		if entry == "" {
			continue
		}
		if size += len(entry) + len(", "); size > budget {
			break
		}
		kept = append(kept, entry)
	}
	slices.Reverse(kept)
	return strings.Join(append(kept, ip), ", ")
}
