package main

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/route"
)

// localHealth answers grpc.health.v1.Health for the gateway itself when no
// route takes the call: in the one-header form, a call without the
// environment header; with VirtualServices, a call no rule matches (a
// catch-all rule takes health calls too, as it does in Istio). Any other
// health call is proxied like any call, to the environment's own health
// service.
type localHealth struct {
	header string
	// routes, when set (VirtualService mode), is the live routing table.
	routes func() *route.Table
	srv    *health.Server
	next   grpc.StreamHandler
}

// answersLocally reports whether a health call with md is the gateway's own
// to answer; explain gives the same answer.
func answersLocally(header string, t *route.Table, vsMode bool, method string, md metadata.MD) bool {
	if !vsMode {
		return len(md[header]) == 0
	}
	req := route.Request{Headers: md, Path: method}
	if a := md[":authority"]; len(a) > 0 {
		req.Authority = a[0]
	}
	_, routed := t.Route(&req)
	return !routed
}

// isHealthMethod is a method of grpc.health.v1.Health.
func isHealthMethod(method string) bool {
	switch method {
	case healthpb.Health_Check_FullMethodName, healthpb.Health_Watch_FullMethodName, healthpb.Health_List_FullMethodName:
		return true
	}
	return false
}

func (h *localHealth) handler(srv any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	if !isHealthMethod(method) {
		return h.next(srv, ss)
	}
	md, _ := metadata.FromIncomingContext(ss.Context())
	var t *route.Table
	if h.routes != nil {
		t = h.routes()
	}
	if !answersLocally(h.header, t, h.routes != nil, method, md) {
		return h.next(srv, ss)
	}
	switch method {
	case healthpb.Health_Check_FullMethodName:
		return unary(ss, h.srv.Check)
	case healthpb.Health_List_FullMethodName:
		return unary(ss, h.srv.List)
	case healthpb.Health_Watch_FullMethodName:
		var req healthpb.HealthCheckRequest
		if err := ss.RecvMsg(&req); err != nil {
			return err
		}
		return h.srv.Watch(&req, &grpc.GenericServerStream[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse]{ServerStream: ss})
	}
	return status.Error(codes.Internal, "unreachable")
}

// unary serves a unary method of a local service on a stream the unknown
// service handler got.
func unary[Req, Resp any](ss grpc.ServerStream, handle func(context.Context, *Req) (*Resp, error)) error {
	var req Req
	if err := ss.RecvMsg(&req); err != nil {
		return err
	}
	resp, err := handle(ss.Context(), &req)
	if err != nil {
		return err
	}
	return ss.SendMsg(resp)
}
