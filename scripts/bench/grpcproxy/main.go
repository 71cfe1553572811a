// Command grpcproxy is the baseline of make bench: the naive env router one
// writes with mwitkow/grpc-proxy as its README shows (its TransparentHandler,
// one connection to one backend, the env header checked in the director), to
// compare envgate against in the same run.
package main

import (
	"context"
	"flag"
	"log"
	"net"

	"github.com/mwitkow/grpc-proxy/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19080", "address to serve on")
	backend := flag.String("backend", "127.0.0.1:19051", "the env1 backend")
	flag.Parse()
	cc, err := grpc.NewClient(*backend, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	director := func(ctx context.Context, _ string) (context.Context, grpc.ClientConnInterface, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get("env"); len(v) == 1 && v[0] == "env1" {
			return metadata.NewOutgoingContext(ctx, md.Copy()), cc, nil
		}
		return nil, nil, status.Error(codes.Unimplemented, "no route")
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(proxy.TransparentHandler(director)))
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(lis))
}
