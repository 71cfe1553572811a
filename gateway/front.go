package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/h2front"
	"github.com/envgate/envgate/gateway/internal/httpproxy"
	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/sniff"
	"github.com/envgate/envgate/gateway/internal/upstream"
)

// sniffTimeout bounds a new connection's TLS handshake and its HTTP/2
// connection preface.
const sniffTimeout = 10 * time.Second

// sniffOptions are how a listener's connections are told apart.
func sniffOptions(cfg *config.Config, l config.Listener, tlsConf *tls.Config) sniff.Options {
	// By default every HTTP/2 connection goes to envgate's own HTTP/2
	// server (Listener.Shared). With sharedHTTP2 off, an HTTP/2
	// connection may wait for its first request as long as it may idle:
	// a load balancer opens connections ahead of its calls, and one sent
	// to the HTTP server for want of a request would serve its gRPC
	// calls there, through grpcfront, instead of on gRPC's server. One
	// that sends nothing for that long goes to the HTTP server, which
	// closes it as idle.
	return sniff.Options{TLS: tlsConf, Timeout: sniffTimeout, FirstRequest: cfg.Limits.IdleTimeout, SharedHTTP2: l.Shared(), Settings: interimSettings(cfg.Limits), ConnWindow: clientConnWindow}
}

// headerTableSize is the HPACK table both servers decode with: HTTP/2's
// default, said explicitly by both so their SETTINGS are the same.
const headerTableSize = 4096

// http2HeaderListOverhead is what Go's HTTP/2 server adds to MaxHeaderBytes
// in SETTINGS_MAX_HEADER_LIST_SIZE (h2_bundle.go
// http2adjustHTTP1MaxHeaderSize: 10 fields of 32 bytes).
const http2HeaderListOverhead = 320

// interimSettings are the SETTINGS the sniffer sends before either server
// speaks: exactly what both servers send next, so the sniffer drops theirs
// and a client sees one SETTINGS frame as from any server. gRPC's
// (grpc-go internal/transport/http2_server.go newHTTP2Server):
// MAX_FRAME_SIZE 16384, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE,
// MAX_HEADER_LIST_SIZE, HEADER_TABLE_SIZE (grpc.HeaderTableSize, at its
// default); envgate's HTTP/2 server (h2front) is given exactly these
// (newHTTP2Server). Both then grant the same connection window
// (ConnWindow).
// TestInterimSettingsAgree checks all of it.
func interimSettings(l config.Limits) []sniff.Setting {
	return []sniff.Setting{
		{ID: uint16(http2.SettingMaxFrameSize), Val: 16384},
		{ID: uint16(http2.SettingMaxConcurrentStreams), Val: l.MaxConcurrentStreams},
		{ID: uint16(http2.SettingInitialWindowSize), Val: clientStreamWindow},
		{ID: uint16(http2.SettingMaxHeaderListSize), Val: uint32(l.MaxRequestHeadersBytes)},
		{ID: uint16(http2.SettingHeaderTableSize), Val: headerTableSize},
	}
}

// newHTTPServer is a listener's net/http server: it serves the HTTP/1.x
// connections the HTTP/1.1 fast path hands over (HTTP/2 goes to
// newHTTP2Server's server or gRPC's).
func newHTTPServer(cfg *config.Config, grpcSrv *grpc.Server, front http.Handler, logger *slog.Logger) *http.Server {
	l := cfg.Limits
	return &http.Server{
		Handler:           frontHandler(grpcSrv, front),
		ReadHeaderTimeout: sniffTimeout,
		IdleTimeout:       l.IdleTimeout,
		// Go's HTTP/2 server adds 320 bytes of per-field overhead to
		// this for SETTINGS_MAX_HEADER_LIST_SIZE, which then says what
		// gRPC's server says.
		MaxHeaderBytes: max(l.MaxRequestHeadersBytes-http2HeaderListOverhead, 1),
		// What a connection carried is not memory it holds: it was
		// consumed when the connection idles between requests, and an
		// upgraded one relays what it reads (edge.Addr, for the overload
		// manager).
		ConnState: func(c net.Conn, s http.ConnState) {
			a, ok := c.RemoteAddr().(heldTracker)
			switch {
			case !ok:
			case s == http.StateIdle:
				a.Consumed(0)
			case s == http.StateHijacked:
				a.Passthrough()
			}
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if st := connTLS(c); st != nil {
				ctx = context.WithValue(ctx, tlsStateKey{}, st)
			}
			return ctx
		},
		ErrorLog: log.New(slogWriter{logger}, "", 0),
	}
}

// newHTTP2Server is a listener's server for every HTTP/2 connection, or
// with sharedHTTP2 off for those whose first request is not gRPC
// (docs/h2front.md): envgate's own, with gRPC's limits and the sniffer's
// SETTINGS; gRPC calls on its connections go to grpcCalls (grpcfront),
// and those it declines (compressed ones) to the listener's gRPC server
// as net/http's server hands them over.
func newHTTP2Server(cfg *config.Config, grpcSrv *grpc.Server, front http.Handler, relay, grpcCalls func(*h2front.Request) bool, logger *slog.Logger) *h2front.Server {
	l := cfg.Limits
	var settings []h2front.Setting
	for _, s := range interimSettings(l) {
		settings = append(settings, h2front.Setting{ID: s.ID, Val: s.Val})
	}
	return h2front.New(frontHandler(grpcSrv, front), h2front.Options{
		MaxConcurrentStreams: l.MaxConcurrentStreams,
		MaxHeaderListSize:    uint32(l.MaxRequestHeadersBytes),
		HeaderTableSize:      headerTableSize,
		StreamWindow:         clientStreamWindow,
		ConnWindow:           clientConnWindow,
		IdleTimeout:          l.IdleTimeout,
		// Silent connections are pinged as gRPC's server pings them.
		PingAfter:   l.KeepaliveTime,
		PingTimeout: l.KeepaliveTimeout,
		// Pings too close together are refused as gRPC's server
		// refuses them (its EnforcementPolicy, newServer).
		MinPingInterval: l.KeepaliveMinTime,
		Settings:        settings,
		// Bodiless REST requests skip the http.Handler adapter.
		Relay: relay,
		// gRPC calls skip it too, and grpc.Server.ServeHTTP
		// (grpcfront); compressed ones go there.
		GRPC: grpcCalls,
		Log:  logger,
	})
}

// heldTracker is what the edge listener's connection address takes
// (edge.Addr) about what the connection holds.
type heldTracker interface {
	Consumed(pending int)
	Passthrough()
}

type tlsStateKey struct{}

// connTLS is the TLS state of a sniffed connection (the sniffer terminated
// TLS), or of one the HTTP/1.1 fast path handed over; nil for plaintext.
func connTLS(c net.Conn) *tls.ConnectionState {
	if t, ok := c.(interface{ TLS() *tls.ConnectionState }); ok {
		return t.TLS()
	}
	return nil
}

// frontHandler gives gRPC requests on the HTTP server's HTTP/2 connections
// to the gRPC server, and everything else to the HTTP front.
func frontHandler(grpcSrv *grpc.Server, front http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			// TLS was terminated by the sniffer: the state is the
			// connection's.
			if st, ok := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState); ok {
				r.TLS = st
			}
		}
		if r.ProtoMajor == 2 && sniff.IsGRPC(r.Header.Get("Content-Type")) {
			grpcSrv.ServeHTTP(w, r)
			return
		}
		front.ServeHTTP(w, r)
	})
}

// slogWriter sends net/http's own log lines (TLS and protocol errors of
// clients) to the gateway's log at debug level.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(b []byte) (int, error) {
	w.log.Debug("http server", "message", route.Truncate(strings.TrimSpace(string(b)), 512))
	return len(b), nil
}

// sniffedCreds are the gRPC server's credentials on a sniffed connection:
// TLS, if any, is already terminated, and its state is the peer's.
type sniffedCreds struct{}

func (sniffedCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if sc, ok := c.(*sniff.Conn); ok && sc.TLS() != nil {
		return c, credentials.TLSInfo{State: *sc.TLS(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
	}
	return c, nil, nil
}

func (sniffedCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, fmt.Errorf("envgate: server-side credentials only")
}

func (sniffedCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "envgate-sniffed"}
}
func (s sniffedCreds) Clone() credentials.TransportCredentials { return s }
func (sniffedCreds) OverrideServerName(string) error           { return nil }

// httpUpstreams gives the HTTP front an endpoint per try: the destination's
// endpoint set and policy as the gRPC front reaches them, round robin, the
// protocol by the Service port.
type httpUpstreams struct {
	g    *gateway
	next *atomic.Uint64
}

func (u httpUpstreams) Endpoint(d route.Destination) (httpproxy.Endpoint, error) {
	t, _, err := u.g.target(d)
	if err != nil {
		return httpproxy.Endpoint{}, err
	}
	eps, ok := u.g.store.Get(t.Set)
	if !ok {
		return httpproxy.Endpoint{}, fmt.Errorf("%w: %s is not known to discovery", upstream.ErrNoHealthyUpstream, t.Set)
	}
	if len(eps) == 0 {
		return httpproxy.Endpoint{}, fmt.Errorf("%w: %s has no ready endpoint", upstream.ErrNoHealthyUpstream, t.Set)
	}
	ep := httpproxy.Endpoint{Addr: eps[u.next.Add(1)%uint64(len(eps))], Protocol: httpproxy.ProtocolOf(u.g.store.Protocol(t.Set))}
	if t.Policy != nil && t.Policy.TLS != nil {
		ep.TLS, ep.TLSKey = t.Policy.TLS, t.Policy.Key
	}
	return ep, nil
}

// httpDial adapts the gateway's dialer (tests map pod addresses with it).
func httpDial(dial func(context.Context, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	if dial == nil {
		return nil
	}
	return func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) }
}
