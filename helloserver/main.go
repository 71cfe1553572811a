// Command helloserver is the second seed's server, in Go: GET / answers
// "Hello World!" (here with the environment it runs in and the one the
// request asked for, as echo answers), and every request is logged with its
// path and headers, in the seed's words. Listens on :8080 ($PORT), stops
// gracefully on SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "helloserver:", err)
		os.Exit(1)
	}
}

type options struct {
	addr, env string
	grace     time.Duration
}

func parseFlags(args []string, getenv func(string) string) (options, error) {
	port := getenv("PORT")
	if port == "" {
		port = "8080"
	}
	fs := flag.NewFlagSet("helloserver", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.addr, "addr", ":"+port, "address to listen on (env PORT sets the port)")
	fs.StringVar(&o.env, "env", getenv("ENV"), "environment this server runs in (env ENV)")
	fs.DurationVar(&o.grace, "grace", 10*time.Second, "how long requests in flight may run after SIGTERM")
	return o, fs.Parse(args)
}

// maxLogHeaders bounds what one request's log line carries of its headers.
const maxLogHeaders = 4 << 10

// run serves until ctx ends, then stops gracefully.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	o, err := parseFlags(args, getenv)
	if err != nil {
		return err
	}
	stdout = &lockedWriter{w: stdout} // request lines come from every connection's goroutine
	log := slog.New(slog.NewTextHandler(stdout, nil))
	lis, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// The seed's first line, as Python's logging prints it.
	fmt.Fprintln(stdout, "INFO:root:Starting server...")
	log.Info("listening", "addr", lis.Addr().String(), "env", o.env, "version", version)

	// HTTP/1.1, and HTTP/2 without TLS (h2c, prior knowledge), as a Go
	// service behind a mesh often serves: a Service port named http2
	// reaches it over HTTP/2.
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols:         protocols,
		Handler:           handler(o.env, stdout),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("server stopped")
	return nil
}

// handler answers as the seed's server.py: any GET path gets "Hello World!"
// and is logged with its path and headers; other methods get 501, as
// Python's BaseHTTPRequestHandler answers a method it has no do_ for.
// /healthz answers the kubelet without a log line.
func handler(env string, out io.Writer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			fmt.Fprintln(w, "ok")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, fmt.Sprintf("Unsupported method (%q)", r.Method), http.StatusNotImplemented)
			return
		}
		// As http.server logs each request, then the seed's own line.
		fmt.Fprintf(out, "%s - - [%s] %q 200 -\n", host(r.RemoteAddr), time.Now().Format("02/Jan/2006 15:04:05"),
			truncate(r.Method+" "+r.URL.RequestURI()+" "+r.Proto, 1024))
		fmt.Fprintf(out, "INFO:root:GET request, Path: %s Headers: %s\n", truncate(r.URL.Path, 1024), headers(r))
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Hello World! ServerEnv:%s, ClientEnv:%s\n", env, truncate(r.Header.Get("env"), 256))
	})
}

// headers renders the request's headers as the seed logs them, "Name:
// value" each, within maxLogHeaders.
func headers(r *http.Request) string {
	names := make([]string, 0, len(r.Header)+1)
	for k := range r.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("Host: " + r.Host)
	for _, k := range names {
		for _, v := range r.Header[k] {
			b.WriteString(" " + k + ": " + v)
		}
	}
	return truncate(b.String(), maxLogHeaders)
}

// lockedWriter writes each line whole.
type lockedWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "...(truncated)"
}

func host(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}
