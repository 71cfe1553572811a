package main

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/routing"
)

// localHealth answers grpc.health.v1.Health for the gateway itself when no
// route takes the call (routing.AnswersLocally); any other health call is
// proxied like any call, to the environment's own health service.
type localHealth struct {
	routing *routing.State
	srv     *health.Server
	next    grpc.StreamHandler
}

func (h *localHealth) handler(srv any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	if !routing.IsHealthMethod(method) {
		return h.next(srv, ss)
	}
	md, _ := metadata.FromIncomingContext(ss.Context())
	if !routing.AnswersLocally(h.routing.Table(), h.routing.VirtualServiceMode(), method, md) {
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
