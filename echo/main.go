// Command echo is the seed's echo server: it answers EchoService calls with the
// environment it runs in (ENV) and the environment the client asked for (the
// `env` header), and offers the knobs a proxy is tested with.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/encoding/gzip" // lets clients and the proxy compress
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/envgate/envgate/echo/echoserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

type options struct {
	addr  string
	env   string
	grace time.Duration
	// tlsCert and tlsKey, when set, make the server speak TLS (ALPN h2),
	// as a backend behind TLS (a mesh sidecar's, or its own) does.
	tlsCert, tlsKey string
}

func parseFlags(args []string, getenv func(string) string) (options, error) {
	port := getenv("PORT")
	if port == "" {
		port = "50051"
	}
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.addr, "addr", ":"+port, "address to listen on (env PORT sets the port)")
	fs.StringVar(&o.env, "env", getenv("ENV"), "environment this server runs in (env ENV)")
	fs.DurationVar(&o.grace, "grace", 10*time.Second, "how long in-flight calls may run after SIGTERM")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "serve TLS with this PEM certificate (with -tls-key)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "the PEM key of -tls-cert")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return o, errors.New("-tls-cert and -tls-key go together")
	}
	return o, nil
}

// run serves until ctx ends, then stops gracefully. It reports the bound
// address on stdout's log so tests can start it on port 0.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	o, err := parseFlags(args, getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stdout, nil))
	lis, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var opts []grpc.ServerOption
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	}
	// A load balancer pings its backends' idle connections every 10-30 s;
	// gRPC's default policy (5 minutes between pings) would answer with
	// GOAWAY too_many_pings. The gateway tolerates the same.
	opts = append(opts, grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}))
	srv := grpc.NewServer(opts...)
	echoserver.Register(srv, &echoserver.Server{Env: o.env, Addr: lis.Addr().String(), Log: log})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	reflection.Register(srv)

	_, port, _ := net.SplitHostPort(lis.Addr().String())
	log.Info(fmt.Sprintf("start server. port:%s, env:%s", port, o.env), "addr", lis.Addr().String())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(o.grace):
		srv.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	log.Info("server stopped")
	return nil
}
