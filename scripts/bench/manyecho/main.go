// Command manyecho serves the echo service on many consecutive loopback
// ports from one process: make bench's environment rows give each of a
// thousand environments three endpoints of their own, so that the gateway
// holds one upstream connection per endpoint as it would in a cluster.
// One gRPC server serves every listener; it does not log calls.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"google.golang.org/grpc"

	"github.com/envgate/envgate/echo/echoserver"
)

func main() {
	base := flag.Int("base", 20000, "first port")
	n := flag.Int("n", 3000, "how many consecutive ports")
	flag.Parse()
	if flag.NArg() > 0 {
		log.Fatalf("manyecho: unexpected arguments %q", flag.Args())
	}
	srv := grpc.NewServer()
	echoserver.Register(srv, &echoserver.Server{Env: "bench"})
	var lis []net.Listener
	for p := *base; p < *base+*n; p++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			log.Fatalf("manyecho: %v", err)
		}
		lis = append(lis, l)
	}
	var wg sync.WaitGroup
	for _, l := range lis {
		wg.Go(func() { _ = srv.Serve(l) })
	}
	fmt.Printf("manyecho: serving on 127.0.0.1:%d-%d\n", *base, *base+*n-1)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	<-sigs
	srv.Stop()
	wg.Wait()
}
