// Command floor is the least work a proxy built on grpc-go alone (a
// grpc.Server in front, a grpc.ClientConn behind) can do per call: an
// unknown-service handler that opens the upstream stream and pumps raw
// frames both ways, with no routing, metrics, retries, logging or header
// handling. make bench runs it so that envgate's CPU per call (grpc-go's
// server in front, its own HTTP/2 client behind) can be read against what
// grpc-go's client would cost at the least, measured in the same run.
// It is not a usable proxy: it forwards every call to one backend.
package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/envgate/envgate/scripts/bench/internal/frames"
)

var desc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

func main() {
	listen := flag.String("listen", "127.0.0.1:19080", "address to serve on")
	backend := flag.String("backend", "127.0.0.1:19051", "the backend")
	flag.Parse()
	cc, err := grpc.NewClient(*backend, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	forceCodec := grpc.ForceCodecV2(frames.Codec{})
	handler := func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		md, _ := metadata.FromIncomingContext(ss.Context())
		ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ss.Context(), md))
		defer cancel()
		cs, err := cc.NewStream(ctx, desc, method, forceCodec)
		if err != nil {
			return err
		}
		// Not waited for, as in grpc-proxy: it ends when the client's side
		// does, which gRPC ensures once this handler returns.
		go func() {
			var f frames.Frame
			for {
				if err := ss.RecvMsg(&f); err != nil {
					_ = cs.CloseSend()
					return
				}
				if err := cs.SendMsg(&f); err != nil {
					return
				}
			}
		}()
		if hdr, err := cs.Header(); err == nil && hdr != nil {
			if err := ss.SendHeader(hdr); err != nil {
				return err
			}
		}
		var f frames.Frame
		for {
			if err = cs.RecvMsg(&f); err != nil {
				break
			}
			if err := ss.SendMsg(&f); err != nil {
				return err
			}
		}
		ss.SetTrailer(cs.Trailer())
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(handler), grpc.ForceServerCodecV2(frames.Codec{}), grpc.NumStreamWorkers(64))
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(lis))
}
