// Command loadgen is the second seed's load generator, in Go. It sends
// requests to SERVER_ADDR at REQUESTS_PER_SECOND, open loop (each request
// leaves at its time whether or not earlier ones have answered), spreads
// them over environments with the env header, and logs the seed's line
// every second. It ends after -duration or -count, or on SIGTERM, with a
// summary per environment: requests, errors by status, latency
// percentiles measured from each request's scheduled time, the rate
// achieved, and whether it kept up. HTTP (the seed's helloserver) or gRPC
// (echo.EchoService/Call).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/proto/echopb"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

type options struct {
	addr               string
	rps                float64
	duration           time.Duration
	count              int
	envs               []string
	protocol           string
	timeout            time.Duration
	maxInflight        int
	insecure           bool
	caFile, serverName string
}

func parseFlags(args []string, getenv func(string) string) (options, error) {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	var o options
	addr := getenv("SERVER_ADDR")
	if addr == "" {
		addr = "http://localhost:8080"
	}
	rps := 5.0
	if v := getenv("REQUESTS_PER_SECOND"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return o, fmt.Errorf("REQUESTS_PER_SECOND %q: %w", v, err)
		}
		rps = f
	}
	var envs string
	fs.StringVar(&o.addr, "addr", addr, "server URL: http:// or https:// (env SERVER_ADDR)")
	fs.Float64Var(&o.rps, "rps", rps, "requests per second (env REQUESTS_PER_SECOND)")
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (0: until -count or SIGTERM)")
	fs.IntVar(&o.count, "count", 0, "stop after this many requests (0: until -duration or SIGTERM)")
	fs.StringVar(&envs, "envs", "", "environments to spread requests over, by the env header, comma separated (none: no header)")
	fs.StringVar(&o.protocol, "protocol", "http", "http (GET /) or grpc (echo.EchoService/Call)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "per request")
	fs.IntVar(&o.maxInflight, "max-inflight", 1000, "requests in flight at most; one due beyond it is dropped and counted")
	fs.BoolVar(&o.insecure, "insecure", false, "TLS without verifying the server")
	fs.StringVar(&o.caFile, "cacert", "", "TLS: verify the server against this PEM CA bundle")
	fs.StringVar(&o.serverName, "server-name", "", "TLS: the server name to send and verify")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case o.rps <= 0 || math.IsInf(o.rps, 0) || math.IsNaN(o.rps):
		return o, errors.New("the rate must be positive")
	case o.protocol != "http" && o.protocol != "grpc":
		return o, fmt.Errorf("-protocol %q: want http or grpc", o.protocol)
	case o.maxInflight < 1:
		return o, errors.New("-max-inflight must be positive")
	}
	for _, e := range strings.Split(envs, ",") {
		if e = strings.TrimSpace(e); e != "" {
			o.envs = append(o.envs, e)
		}
	}
	if len(o.envs) == 0 {
		o.envs = []string{""}
	}
	return o, nil
}

// sender makes one request for env and returns its outcome: "OK", an HTTP
// status ("503"), a gRPC code ("Unavailable"), or a transport error class.
type sender func(ctx context.Context, env string) string

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	o, err := parseFlags(args, getenv)
	if err != nil {
		return err
	}
	send, closeFn, err := newSender(o)
	if err != nil {
		return err
	}
	defer closeFn()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	// The seed's first line.
	fmt.Fprintf(stdout, "Starting loadgen: %s\n", time.Now().Format("2006-01-02 15:04:05.000000"))
	st := newStats(o.envs)
	start := time.Now()
	var wg sync.WaitGroup
	var inflight atomic.Int64
	var done atomic.Int64                      // completed in the current second, for the seed's line
	logCtx, stopLog := context.WithCancel(ctx) // the per-second line, until the last request is in
	defer stopLog()
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-logCtx.Done():
				return
			case <-t.C:
				fmt.Fprintf(stdout, "%d request(s) complete to %s\n", done.Swap(0), o.addr)
			}
		}
	}()
	interval := time.Duration(float64(time.Second) / o.rps)
	timer := time.NewTimer(0)
	defer timer.Stop()
loop:
	for i := 0; o.count == 0 || i < o.count; i++ {
		due := start.Add(time.Duration(i) * interval)
		timer.Reset(time.Until(due))
		select {
		case <-ctx.Done():
			break loop
		case <-timer.C:
		}
		env := o.envs[i%len(o.envs)]
		if time.Since(due) > interval {
			st.late(env)
		}
		if inflight.Load() >= int64(o.maxInflight) {
			st.dropped(env)
			continue
		}
		inflight.Add(1)
		wg.Go(func() {
			defer inflight.Add(-1)
			rctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			defer cancel()
			outcome := send(rctx, env)
			st.record(env, outcome, time.Since(due)) // from the scheduled time: no coordinated omission
			done.Add(1)
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopLog()
	<-logDone
	st.print(stdout, o, elapsed)
	return nil
}

func newSender(o options) (sender, func(), error) {
	u, err := url.Parse(o.addr)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, nil, fmt.Errorf("server address %q: want http://host:port or https://host:port", o.addr)
	}
	tlsCfg, err := clientTLS(o, u.Scheme == "https")
	if err != nil {
		return nil, nil, err
	}
	if o.protocol == "grpc" {
		creds := insecure.NewCredentials()
		if tlsCfg != nil {
			creds = credentials.NewTLS(tlsCfg)
		}
		cc, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, nil, err
		}
		c := echopb.NewEchoServiceClient(cc)
		return func(ctx context.Context, env string) string {
			if env != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "env", env)
			}
			_, err := c.Call(ctx, &echopb.EchoRequest{})
			if err == nil {
				return "OK"
			}
			return status.Code(err).String()
		}, func() { _ = cc.Close() }, nil
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: o.maxInflight, ForceAttemptHTTP2: true}
	client := &http.Client{Transport: tr}
	target := o.addr
	return func(ctx context.Context, env string) string {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return "bad request"
		}
		if env != "" {
			req.Header.Set("env", env)
		}
		resp, err := client.Do(req)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return "timeout"
			}
			return "transport error"
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return "OK"
		}
		return strconv.Itoa(resp.StatusCode)
	}, tr.CloseIdleConnections, nil
}

func clientTLS(o options, https bool) (*tls.Config, error) {
	if !https && o.caFile == "" && !o.insecure {
		return nil, nil
	}
	c := &tls.Config{ServerName: o.serverName, InsecureSkipVerify: o.insecure, MinVersion: tls.VersionTLS12}
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", o.caFile)
		}
	}
	return c, nil
}

// stats are the outcomes per environment. Latencies go into a log
// histogram: bounded memory whatever the run's length.
type stats struct {
	mu    sync.Mutex // guards byEnv's contents
	byEnv map[string]*envStats
}

type envStats struct {
	outcomes      map[string]int // bounded: a handful of statuses
	hist          [histBuckets]int
	n, late, drop int
}

// The histogram covers 10 µs to about 100 s in steps of 2%.
const (
	histMin     = 10 * time.Microsecond
	histGrowth  = 1.02
	histBuckets = 820
)

func bucketOf(d time.Duration) int {
	if d <= histMin {
		return 0
	}
	b := int(math.Log(float64(d)/float64(histMin))/math.Log(histGrowth)) + 1
	return min(b, histBuckets-1)
}

func upperBound(b int) time.Duration {
	return time.Duration(float64(histMin) * math.Pow(histGrowth, float64(b)))
}

func newStats(envs []string) *stats {
	s := &stats{byEnv: map[string]*envStats{}}
	for _, e := range envs {
		s.byEnv[e] = &envStats{outcomes: map[string]int{}}
	}
	return s
}

func (s *stats) record(env, outcome string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.byEnv[env]
	e.n++
	e.outcomes[outcome]++
	e.hist[bucketOf(d)]++
}

func (s *stats) late(env string) {
	s.mu.Lock()
	s.byEnv[env].late++
	s.mu.Unlock()
}

func (s *stats) dropped(env string) {
	s.mu.Lock()
	s.byEnv[env].drop++
	s.mu.Unlock()
}

func (e *envStats) percentile(p float64) time.Duration {
	if e.n == 0 {
		return 0
	}
	want := int(math.Ceil(p * float64(e.n)))
	seen := 0
	for b, c := range e.hist {
		seen += c
		if seen >= want {
			return upperBound(b)
		}
	}
	return upperBound(histBuckets - 1)
}

func (s *stats) print(out io.Writer, o options, elapsed time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(out, "\nsummary: %s, %s, asked %.1f requests/s over %d environment(s), ran %v\n", o.addr, o.protocol, o.rps, len(o.envs), elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "%-12s %8s %8s %8s %8s %10s %10s %10s %10s  %s\n", "env", "requests", "ok", "late", "dropped", "p50", "p90", "p99", "rate/s", "errors")
	envs := make([]string, 0, len(s.byEnv))
	for e := range s.byEnv {
		envs = append(envs, e)
	}
	sort.Strings(envs)
	behind := false
	for _, name := range envs {
		e := s.byEnv[name]
		var errs []string
		for k, v := range e.outcomes {
			if k != "OK" {
				errs = append(errs, fmt.Sprintf("%s:%d", k, v))
			}
		}
		sort.Strings(errs)
		label := name
		if label == "" {
			label = "(no env)"
		}
		rate := float64(e.n) / elapsed.Seconds()
		fmt.Fprintf(out, "%-12s %8d %8d %8d %8d %10v %10v %10v %10.1f  %s\n", label, e.n, e.outcomes["OK"], e.late, e.drop,
			e.percentile(0.50).Round(time.Microsecond), e.percentile(0.90).Round(time.Microsecond), e.percentile(0.99).Round(time.Microsecond), rate, strings.Join(errs, " "))
		behind = behind || e.drop > 0 || e.late > 0
	}
	if behind {
		fmt.Fprintln(out, "loadgen could not keep up: requests left late or were dropped at -max-inflight; the figures above understate the load asked for")
	}
}
