package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // compressed calls are forwarded compressed
	"google.golang.org/grpc/keepalive"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/discovery"
	"github.com/envgate/envgate/gateway/internal/proxy"
	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/upstream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// gateway is one running envgate: its listeners, servers, routes and
// upstream connections.
type gateway struct {
	cfg    *config.Config
	log    *slog.Logger
	store  *discovery.Store
	pool   *upstream.Pool
	routes atomic.Pointer[route.Table]

	listeners []net.Listener
	servers   []*grpc.Server
}

// newGateway builds everything and binds the listeners, so that addresses
// are known (port 0 included) before Run.
func newGateway(cfg *config.Config, log *slog.Logger) (*gateway, error) {
	table, err := cfg.Table()
	if err != nil {
		return nil, err
	}
	g := &gateway{cfg: cfg, log: log, store: discovery.NewStore()}
	g.routes.Store(table)
	discovery.Static(g.store, cfg.StaticEndpoints())

	maxMsg := cfg.Limits.MaxMessageBytes
	g.pool = upstream.NewPool(g.store, log,
		grpc.WithUserAgent("envgate/"+version),
		grpc.WithStatsHandler(proxy.StatsHandler()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)),
	)
	var accessLog *slog.Logger
	if *cfg.AccessLog {
		accessLog = log
	}
	px := proxy.New(proxy.NewDirector(g.routes.Load, poolUpstreams{g.pool}), accessLog, cfg.Routing.Header)

	for _, l := range cfg.Listeners {
		creds := insecure.NewCredentials()
		if l.TLS != nil {
			cert, err := tls.LoadX509KeyPair(l.TLS.CertFile, l.TLS.KeyFile)
			if err != nil {
				g.closeListeners()
				return nil, fmt.Errorf("listener %s: %w", l.Address, err)
			}
			// gRPC's TLS credentials add and enforce ALPN "h2".
			creds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		}
		lis, err := net.Listen("tcp", l.Address)
		if err != nil {
			g.closeListeners()
			return nil, fmt.Errorf("listen: %w", err)
		}
		g.listeners = append(g.listeners, lis)
		g.servers = append(g.servers, newServer(cfg, creds, px))
	}
	return g, nil
}

func newServer(cfg *config.Config, creds credentials.TransportCredentials, px *proxy.Proxy) *grpc.Server {
	l := cfg.Limits
	return grpc.NewServer(
		grpc.Creds(creds),
		grpc.UnknownServiceHandler(px.Handler),
		grpc.ForceServerCodecV2(proxy.ServerCodec()),
		grpc.MaxRecvMsgSize(l.MaxMessageBytes),
		grpc.MaxSendMsgSize(l.MaxMessageBytes),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             l.KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    l.KeepaliveTime,
			Timeout: l.KeepaliveTimeout,
		}),
	)
}

// Addrs are the bound listener addresses, in configuration order.
func (g *gateway) Addrs() []string {
	out := make([]string, len(g.listeners))
	for i, l := range g.listeners {
		out[i] = l.Addr().String()
	}
	return out
}

// Run serves until ctx ends, then stops accepting, lets calls in flight
// finish for up to the shutdown grace, and closes what is left.
func (g *gateway) Run(ctx context.Context) error {
	poolCtx, stopPool := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.pool.Run(poolCtx) })
	defer func() {
		stopPool()
		wg.Wait()
	}()

	serveErr := make(chan error, len(g.servers))
	var serving sync.WaitGroup
	for i, srv := range g.servers {
		lis := g.listeners[i]
		g.log.Info("listening", "address", lis.Addr().String(), "tls", g.cfg.Listeners[i].TLS != nil, "version", version)
		serving.Go(func() {
			if err := srv.Serve(lis); err != nil {
				serveErr <- fmt.Errorf("serve %s: %w", lis.Addr(), err)
			}
		})
	}

	var err error
	select {
	case <-ctx.Done():
		g.log.Info("shutting down", "grace", g.cfg.ShutdownGrace.String())
	case err = <-serveErr:
	}
	g.stop(g.cfg.ShutdownGrace)
	serving.Wait()
	return err
}

// stop drains every server at once and forces them closed after grace.
func (g *gateway) stop(grace time.Duration) {
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, srv := range g.servers {
			wg.Go(srv.GracefulStop)
		}
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		g.log.Info("stopped: every call finished")
	case <-t.C:
		g.log.Warn("stopped: shutdown grace over, ending calls in flight")
		for _, srv := range g.servers {
			srv.Stop()
		}
		<-done
	}
}

func (g *gateway) closeListeners() {
	for _, l := range g.listeners {
		_ = l.Close()
	}
}

// poolUpstreams adapts the pool to what the proxy asks of it.
type poolUpstreams struct{ pool *upstream.Pool }

func (u poolUpstreams) Conn(d route.Destination) (grpc.ClientConnInterface, error) {
	c, err := u.pool.Get(d.Key())
	if err != nil {
		return nil, err
	}
	return c, nil
}
