// Command load is make bench's client for what h2load and ghz do not
// measure: long-lived streams and many connections. It speaks gRPC to the
// echo service (directly or through a proxy), runs one bounded workload,
// and reads the CPU time and memory of the process under test (-pid, with
// its direct children: nginx's workers) from /proc around it, so that each
// figure belongs to the workload alone.
//
// Modes (each prints one line of space-separated figures, named in its
// usage below):
//
//	stream    server-streaming: -streams concurrent ServerStream calls of
//	          -msg byte responses until -bytes arrived in all.
//	          Prints: MB/s, proxy CPU seconds per GB, backend CPU s/GB.
//	pingpong  -streams concurrent BidiStreams, each -rounds round trips of
//	          -msg bytes one at a time. Prints: p50 ms, p99 ms, round trips/s,
//	          proxy CPU seconds per 10k round trips.
//	conns     -conns connections each make one call, then stay idle with
//	          keepalive pings (every 10 s, the least gRPC's client sends)
//	          for -idle; then -calls calls on -active of them (one in
//	          flight on each), and the same calls on 10 connections with
//	          the same number in flight; then open loop, -conns-rps calls
//	          a second for -conns-duration spread over the -active
//	          connections, and the same over 10. Prints: RSS MB before, RSS
//	          MB idle, KiB per idle connection, peak RSS MB, then for the
//	          active and the 10-connection runs: calls/s, p99 ms, proxy CPU
//	          s per 10k, this client's CPU s per 10k; then for the open-loop
//	          runs on the active and on 10 connections: p50 ms, p99 ms,
//	          proxy CPU s per 10k.
//	envs      calls over -conns connections (-inflight in flight) spread
//	          evenly over the environments env1..env<-envs>: first 6 per
//	          environment (every endpoint connected), then -calls timed.
//	          With -idle-wait, waits that long (past the gateway's
//	          upstream.idleTimeout) and makes one call per environment
//	          again. Prints: calls/s, p99 ms, proxy CPU s per 10k, RSS MB,
//	          open descriptors, goroutines (from -metrics), then, with
//	          -idle-wait, descriptors after the wait and calls failed after
//	          it (-1 without).
//	rate      open loop: unary 100 B calls at -rps for -duration over
//	          -conns connections, each started when due whatever the
//	          others do (at most -max-inflight in flight; one due past it
//	          counts as dropped), its latency taken from when it was due.
//	          Prints: calls due, OK, refused (RESOURCE_EXHAUSTED or
//	          UNAVAILABLE), other errors, dropped, p50, p99, p99.9 ms of
//	          the OK calls, OK calls/s.
//
// Every mode is bounded by its counts and by -timeout.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/envgate/envgate/proto/echopb"
	"github.com/envgate/envgate/scripts/bench/internal/frames"
)

type options struct {
	addr, env, ca, name string
	pid, backendPID     int
	streams, rounds     int
	msg                 int
	bytes               int64
	conns, active       int
	calls               int
	idle, timeout       time.Duration
	envs, inflight      int
	idleWait            time.Duration
	metrics             string
	rps                 float64
	duration            time.Duration
	connsRPS            float64
	connsDuration       time.Duration
	maxInflight         int
}

func main() {
	var o options
	mode := flag.String("mode", "", "stream, pingpong or conns")
	flag.StringVar(&o.addr, "addr", "127.0.0.1:19080", "the target")
	flag.StringVar(&o.env, "env", "env1", "the env header")
	flag.StringVar(&o.ca, "ca", "", "speak TLS, trusting this CA (PEM)")
	flag.StringVar(&o.name, "name", "echo.bench", "the TLS server name")
	flag.IntVar(&o.pid, "pid", 0, "the process under test (0: none, CPU and RSS read as 0)")
	flag.IntVar(&o.backendPID, "backend-pid", 0, "the backend process")
	flag.IntVar(&o.streams, "streams", 10, "concurrent streams")
	flag.IntVar(&o.rounds, "rounds", 200, "pingpong: round trips per stream")
	flag.IntVar(&o.msg, "msg", 1024, "message payload bytes")
	flag.Int64Var(&o.bytes, "bytes", 1<<30, "stream: payload bytes to receive in all")
	flag.IntVar(&o.conns, "conns", 10000, "conns: connections")
	flag.IntVar(&o.active, "active", 1000, "conns: connections that then make calls")
	flag.IntVar(&o.calls, "calls", 20000, "conns: calls in each active run")
	flag.DurationVar(&o.idle, "idle", 15*time.Second, "conns: how long the connections stay idle")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "the whole run's bound")
	flag.IntVar(&o.envs, "envs", 2, "envs: environments")
	flag.IntVar(&o.inflight, "inflight", 50, "envs: calls in flight")
	flag.DurationVar(&o.idleWait, "idle-wait", 0, "envs: wait this long, then call every environment again")
	flag.StringVar(&o.metrics, "metrics", "", "envs: the gateway's Prometheus endpoint (go_goroutines)")
	flag.Float64Var(&o.rps, "rps", 1000, "rate: calls per second")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "rate: how long")
	flag.IntVar(&o.maxInflight, "max-inflight", 20000, "rate: calls in flight at most")
	flag.Float64Var(&o.connsRPS, "conns-rps", 3000, "conns: the open-loop runs' calls per second")
	flag.DurationVar(&o.connsDuration, "conns-duration", 5*time.Second, "conns: how long each open-loop run lasts")
	flag.Parse()
	if flag.NArg() > 0 {
		log.Fatalf("load: unexpected arguments %q", flag.Args())
	}
	raiseFileLimit()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "env", o.env)
	var (
		out string
		err error
	)
	switch *mode {
	case "stream":
		out, err = stream(ctx, o)
	case "pingpong":
		out, err = pingpong(ctx, o)
	case "conns":
		out, err = conns(ctx, o)
	case "envs":
		out, err = envs(ctx, o)
	case "rate":
		out, err = rate(ctx, o)
	default:
		err = fmt.Errorf("-mode must be stream, pingpong, conns, envs or rate, not %q", *mode)
	}
	if err != nil {
		log.Fatalf("load: %v", err)
	}
	fmt.Println(out)
}

// dial opens one client connection (gRPC dials lazily: Connect starts it).
func dial(o options, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if o.ca != "" {
		pem, err := os.ReadFile(o.ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no certificate", o.ca)
		}
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: o.name})
	}
	opts = append(opts, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	cc, err := grpc.NewClient(o.addr, opts...)
	if err != nil {
		return nil, err
	}
	cc.Connect()
	return cc, nil
}

var (
	serverStreamDesc = &grpc.StreamDesc{ServerStreams: true}
	bidiDesc         = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
)

// stream receives o.bytes of ServerStream responses over o.streams
// concurrent calls on one connection, as a load balancer multiplexes them.
func stream(ctx context.Context, o options) (string, error) {
	cc, err := dial(o)
	if err != nil {
		return "", err
	}
	defer cc.Close()
	perStream := o.bytes / int64(o.streams) / int64(o.msg)
	if perStream < 1 {
		perStream = 1
	}
	run := func(count int64) (int64, error) {
		var total atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, o.streams)
		for range o.streams {
			wg.Go(func() {
				n, err := serverStream(ctx, cc, o.msg, count)
				total.Add(n)
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		return total.Load(), <-errs
	}
	// Warm up: connections, stream workers, buffers.
	if _, err := run(max(perStream/20, 1)); err != nil {
		return "", fmt.Errorf("warm-up: %w", err)
	}
	c0, b0 := cpuTicks(o.pid), cpuTicks(o.backendPID)
	start := time.Now()
	got, err := run(perStream)
	elapsed := time.Since(start)
	c1, b1 := cpuTicks(o.pid), cpuTicks(o.backendPID)
	if err != nil {
		return "", err
	}
	gb := float64(got) / 1e9
	return fmt.Sprintf("%.1f %.3f %.3f", float64(got)/1e6/elapsed.Seconds(),
		seconds(c1-c0)/gb, seconds(b1-b0)/gb), nil
}

// serverStream makes one ServerStream call of count responses of size
// bytes and returns the response bytes received.
func serverStream(ctx context.Context, cc *grpc.ClientConn, size int, count int64) (int64, error) {
	req, err := proto.Marshal(&echopb.EchoRequest{ResponseSize: int32(size), Count: int32(count)})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := cc.NewStream(ctx, serverStreamDesc, "/echo.EchoService/ServerStream", grpc.ForceCodecV2(frames.Codec{}))
	if err != nil {
		return 0, err
	}
	if err := cs.SendMsg(&frames.Frame{Data: frames.Bytes(req)}); err != nil {
		return 0, err
	}
	if err := cs.CloseSend(); err != nil {
		return 0, err
	}
	var n, msgs int64
	for {
		var f frames.Frame
		err := cs.RecvMsg(&f)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, err
		}
		n += int64(f.Data.Len())
		msgs++
		f.Data.Free()
	}
	if msgs != count {
		return n, fmt.Errorf("ServerStream: %d responses, want %d", msgs, count)
	}
	return n, nil
}

// pingpong times round trips on o.streams concurrent BidiStreams, one
// message in flight on each.
func pingpong(ctx context.Context, o options) (string, error) {
	cc, err := dial(o)
	if err != nil {
		return "", err
	}
	defer cc.Close()
	req := &echopb.EchoRequest{ResponseSize: int32(o.msg), Payload: make([]byte, o.msg)}
	run := func(rounds int) ([]time.Duration, error) {
		var (
			mu  sync.Mutex // guards all
			all []time.Duration
			wg  sync.WaitGroup
		)
		errs := make(chan error, o.streams)
		for range o.streams {
			wg.Go(func() {
				rtts, err := bidi(ctx, cc, req, rounds)
				mu.Lock()
				all = append(all, rtts...)
				mu.Unlock()
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		return all, <-errs
	}
	if _, err := run(max(o.rounds/10, 1)); err != nil {
		return "", fmt.Errorf("warm-up: %w", err)
	}
	c0 := cpuTicks(o.pid)
	start := time.Now()
	rtts, err := run(o.rounds)
	elapsed := time.Since(start)
	c1 := cpuTicks(o.pid)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%.3f %.3f %.0f %.3f", ms(percentile(rtts, 0.5)), ms(percentile(rtts, 0.99)),
		float64(len(rtts))/elapsed.Seconds(), seconds(c1-c0)/float64(len(rtts))*10000), nil
}

func bidi(ctx context.Context, cc *grpc.ClientConn, req *echopb.EchoRequest, rounds int) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := cc.NewStream(ctx, bidiDesc, "/echo.EchoService/BidiStream")
	if err != nil {
		return nil, err
	}
	rtts := make([]time.Duration, 0, rounds)
	for range rounds {
		start := time.Now()
		if err := cs.SendMsg(req); err != nil {
			return rtts, err
		}
		var resp echopb.EchoResponse
		if err := cs.RecvMsg(&resp); err != nil {
			return rtts, err
		}
		rtts = append(rtts, time.Since(start))
	}
	if err := cs.CloseSend(); err != nil {
		return rtts, err
	}
	if err := cs.RecvMsg(new(echopb.EchoResponse)); !errors.Is(err, io.EOF) {
		return rtts, fmt.Errorf("BidiStream end: %v", err)
	}
	return rtts, nil
}

// conns holds o.conns connections idle, then drives o.active of them.
func conns(ctx context.Context, o options) (string, error) {
	if o.active > o.conns || o.active < 10 {
		return "", fmt.Errorf("-active must be between 10 and -conns")
	}
	req := &echopb.EchoRequest{ResponseSize: 100, Payload: make([]byte, 100)}
	call := func(cc *grpc.ClientConn) error {
		return cc.Invoke(ctx, "/echo.EchoService/Call", req, new(echopb.EchoResponse))
	}
	rssBefore := rssKB(o.pid)
	ccs, err := dialN(o, o.conns, grpc.WithKeepaliveParams(keepalive.ClientParameters{
		Time: 10 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}))
	defer closeAll(ccs)
	if err != nil {
		return "", err
	}
	// Each connection's one call, 100 at a time.
	if _, n, err := callLoop(ccs, 100, o.conns, func(_ *grpc.ClientConn, i int64) error { return call(ccs[i]) }); n > 0 {
		return "", fmt.Errorf("%d of %d first calls failed, the first: %w", n, o.conns, err)
	}
	// Idle, as a load balancer's spare connections are: keepalive pings
	// only.
	select {
	case <-time.After(o.idle):
	case <-ctx.Done():
		return "", ctx.Err()
	}
	rssIdle := rssKB(o.pid)
	active, err := drive(o, ccs[:o.active], 1, call)
	if err != nil {
		return "", fmt.Errorf("%d connections: %w", o.active, err)
	}
	few, err := drive(o, ccs[:10], o.active/10, call)
	if err != nil {
		return "", fmt.Errorf("10 connections: %w", err)
	}
	// The same offered rate on both: a closed loop's rate is the
	// machine's, client and backend included (they pay for each
	// connection's reads and writes too), where an open loop below it
	// shows what a call takes when the calls come over many connections.
	openActive, err := steady(ctx, o, ccs[:o.active], req)
	if err != nil {
		return "", fmt.Errorf("%d connections, open loop: %w", o.active, err)
	}
	openFew, err := steady(ctx, o, ccs[:10], req)
	if err != nil {
		return "", fmt.Errorf("10 connections, open loop: %w", err)
	}
	// Every connection still works after the runs.
	for i, cc := range ccs {
		if err := call(cc); err != nil {
			return "", fmt.Errorf("connection %d after the runs: %w", i, err)
		}
	}
	return fmt.Sprintf("%.1f %.1f %.1f %.1f %s %s %s %s", float64(rssBefore)/1024, float64(rssIdle)/1024,
		float64(rssIdle-rssBefore)/float64(o.conns), float64(peakRSSKB(o.pid))/1024, active, few, openActive, openFew), nil
}

// steady runs o.connsRPS calls a second for o.connsDuration over ccs, open
// loop, and returns "p50_ms p99_ms cpu_s_per_10k" for the process under
// test; a call that fails or cannot start in time fails it.
func steady(ctx context.Context, o options, ccs []*grpc.ClientConn, req *echopb.EchoRequest) (string, error) {
	c0 := cpuTicks(o.pid)
	r := openLoop(ctx, ccs, req, o.connsRPS, o.connsDuration, o.maxInflight)
	c1 := cpuTicks(o.pid)
	if bad := r.total - r.ok; bad > 0 {
		return "", fmt.Errorf("%d of %d calls failed or were dropped (%d refused, %d dropped)", bad, r.total, r.refused, r.dropped)
	}
	return fmt.Sprintf("%.3f %.3f %.3f", ms(percentile(r.lat, 0.5)), ms(percentile(r.lat, 0.99)),
		seconds(c1-c0)/float64(r.ok)*10000), nil
}

// drive makes o.calls calls over ccs, perConn in flight on each, and
// returns "calls/s p99_ms cpu_s_per_10k client_cpu_s_per_10k": the
// process under test's CPU, then this one's, which shares the machine.
func drive(o options, ccs []*grpc.ClientConn, perConn int, call func(*grpc.ClientConn) error) (string, error) {
	self := os.Getpid()
	c0, self0 := cpuTicks(o.pid), cpuTicks(self)
	start := time.Now()
	lat, failed, err := callLoop(ccs, len(ccs)*perConn, o.calls, func(cc *grpc.ClientConn, _ int64) error { return call(cc) })
	elapsed := time.Since(start)
	c1, self1 := cpuTicks(o.pid), cpuTicks(self)
	if failed > 0 {
		return "", fmt.Errorf("%d calls failed, the first: %w", failed, err)
	}
	return fmt.Sprintf("%.0f %.3f %.3f %.3f", float64(len(lat))/elapsed.Seconds(), ms(percentile(lat, 0.99)),
		seconds(c1-c0)/float64(len(lat))*10000, seconds(self1-self0)/float64(len(lat))*10000), nil
}

// callLoop makes n calls from workers goroutines, worker w on connection
// w % len(ccs), call i made by do(cc, i). It returns the latencies of the
// calls that succeeded, how many failed and the first error.
func callLoop(ccs []*grpc.ClientConn, workers, n int, do func(cc *grpc.ClientConn, i int64) error) ([]time.Duration, int64, error) {
	var (
		next   atomic.Int64
		failed atomic.Int64
		first  atomic.Value
		mu     sync.Mutex // guards lat
		lat    = make([]time.Duration, 0, n)
		wg     sync.WaitGroup
	)
	for w := range workers {
		cc := ccs[w%len(ccs)]
		wg.Go(func() {
			var mine []time.Duration
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				t := time.Now()
				if err := do(cc, i); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
					continue
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	err, _ := first.Load().(error)
	return lat, failed.Load(), err
}

// dialN opens n connections; the caller closes what it returns.
func dialN(o options, n int, opts ...grpc.DialOption) ([]*grpc.ClientConn, error) {
	ccs := make([]*grpc.ClientConn, 0, n)
	for range n {
		cc, err := dial(o, opts...)
		if err != nil {
			return ccs, err
		}
		ccs = append(ccs, cc)
	}
	return ccs, nil
}

func closeAll(ccs []*grpc.ClientConn) {
	for _, cc := range ccs {
		cc.Close()
	}
}

// envs spreads calls over many environments' upstreams.
func envs(ctx context.Context, o options) (string, error) {
	ccs, err := dialN(o, o.conns)
	defer closeAll(ccs)
	if err != nil {
		return "", err
	}
	req := &echopb.EchoRequest{ResponseSize: 100, Payload: make([]byte, 100)}
	// run makes n calls, the i-th to environment i % o.envs.
	run := func(n int) ([]time.Duration, int64, error) {
		return callLoop(ccs, o.inflight, n, func(cc *grpc.ClientConn, i int64) error {
			cctx := metadata.NewOutgoingContext(ctx, metadata.Pairs("env", fmt.Sprintf("env%d", i%int64(o.envs)+1)))
			return cc.Invoke(cctx, "/echo.EchoService/Call", req, new(echopb.EchoResponse))
		})
	}
	if _, failed, err := run(6 * o.envs); failed > 0 {
		return "", fmt.Errorf("warm-up: %d calls failed, the first: %w", failed, err)
	}
	c0 := cpuTicks(o.pid)
	start := time.Now()
	lat, failed, err := run(o.calls)
	elapsed := time.Since(start)
	c1 := cpuTicks(o.pid)
	if failed > 0 {
		return "", fmt.Errorf("%d calls failed, the first: %w", failed, err)
	}
	out := fmt.Sprintf("%.0f %.3f %.3f %.1f %d %d", float64(len(lat))/elapsed.Seconds(), ms(percentile(lat, 0.99)),
		seconds(c1-c0)/float64(len(lat))*10000, float64(rssKB(o.pid))/1024, openFiles(o.pid), goroutines(o.metrics))
	if o.idleWait <= 0 {
		return out + " 0 -1", nil
	}
	select {
	case <-time.After(o.idleWait):
	case <-ctx.Done():
		return "", ctx.Err()
	}
	idleFDs := openFiles(o.pid)
	_, failed, _ = run(o.envs)
	return fmt.Sprintf("%s %d %d", out, idleFDs, failed), nil
}

// rate makes calls at a fixed rate, not waiting for answers.
func rate(ctx context.Context, o options) (string, error) {
	ccs, err := dialN(o, o.conns)
	defer closeAll(ccs)
	if err != nil {
		return "", err
	}
	req := &echopb.EchoRequest{ResponseSize: int32(o.msg), Payload: make([]byte, o.msg)}
	// Warm up every connection.
	for _, cc := range ccs {
		if err := cc.Invoke(ctx, "/echo.EchoService/Call", req, new(echopb.EchoResponse)); err != nil {
			return "", fmt.Errorf("warm-up: %w", err)
		}
	}
	r := openLoop(ctx, ccs, req, o.rps, o.duration, o.maxInflight)
	return fmt.Sprintf("%d %d %d %d %d %.3f %.3f %.3f %.0f", r.total, r.ok, r.refused, r.other, r.dropped,
		ms(percentile(r.lat, 0.5)), ms(percentile(r.lat, 0.99)), ms(percentile(r.lat, 0.999)), float64(r.ok)/r.elapsed.Seconds()), nil
}

// loopResult is what an open-loop run counted: calls due, OK, refused
// (RESOURCE_EXHAUSTED or UNAVAILABLE), other errors, dropped (due with
// the most already in flight), the OK calls' latencies from when each
// was due, and how long the run took.
type loopResult struct {
	total, ok, refused, other, dropped int64
	lat                                []time.Duration
	elapsed                            time.Duration
}

// openLoop makes rps calls of req a second for d over ccs (call i on
// ccs[i % len]), each started when due whatever the others do, at most
// maxInflight at once.
func openLoop(ctx context.Context, ccs []*grpc.ClientConn, req *echopb.EchoRequest, rps float64, d time.Duration, maxInflight int) loopResult {
	total := int(rps * d.Seconds())
	var (
		ok, refused, other, dropped atomic.Int64
		inflight                    atomic.Int64
		mu                          sync.Mutex // guards lat
		lat                         = make([]time.Duration, 0, total)
		wg                          sync.WaitGroup
	)
	interval := time.Duration(float64(time.Second) / rps)
	start := time.Now()
	for i := 0; i < total; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			break
		}
		if inflight.Load() >= int64(maxInflight) {
			dropped.Add(1)
			continue
		}
		inflight.Add(1)
		cc := ccs[i%len(ccs)]
		wg.Go(func() {
			defer inflight.Add(-1)
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			err := cc.Invoke(cctx, "/echo.EchoService/Call", req, new(echopb.EchoResponse))
			switch status.Code(err) {
			case codes.OK:
				ok.Add(1)
				d := time.Since(due)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			case codes.ResourceExhausted, codes.Unavailable:
				refused.Add(1)
			default:
				other.Add(1)
			}
		})
	}
	wg.Wait()
	return loopResult{total: int64(total), ok: ok.Load(), refused: refused.Load(), other: other.Load(),
		dropped: dropped.Load(), lat: lat, elapsed: time.Since(start)}
}

// openFiles counts the process's open descriptors (not its children's).
func openFiles(pid int) int {
	if pid == 0 {
		return 0
	}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// goroutines reads go_goroutines from a Prometheus text endpoint; -1 if
// there is none.
func goroutines(url string) int {
	if url == "" {
		return -1
	}
	resp, err := http.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return int(v)
		}
	}
	return -1
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(int(float64(len(d))*p), len(d)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// raiseFileLimit lifts the soft open-file limit to the hard one: 10,000
// connections need as many descriptors.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// family is pid and its direct children (nginx's and HAProxy's workers).
func family(pid int) []int {
	if pid == 0 {
		return nil
	}
	out := []int{pid}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, s := range stats {
		f := statFields(s)
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			if p, err := strconv.Atoi(filepath.Base(filepath.Dir(s))); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}

// statFields are /proc/PID/stat's fields after the command name: state
// first, so ppid is [1], utime [11] and stime [12].
func statFields(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// clockTick is USER_HZ, 100 on every Linux this runs on.
const clockTick = 100

func cpuTicks(pid int) int64 {
	var sum int64
	for _, p := range family(pid) {
		f := statFields(fmt.Sprintf("/proc/%d/stat", p))
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			sum += u + s
		}
	}
	return sum
}

func seconds(ticks int64) float64 { return float64(ticks) / clockTick }

func rssKB(pid int) int64     { return statusKB(pid, "VmRSS:") }
func peakRSSKB(pid int) int64 { return statusKB(pid, "VmHWM:") }

func statusKB(pid int, field string) int64 {
	var sum int64
	for _, p := range family(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, field); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					v, _ := strconv.ParseInt(f[0], 10, 64)
					sum += v
				}
			}
		}
	}
	return sum
}
