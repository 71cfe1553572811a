//go:build soak

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/echo/echoserver"
	"github.com/envgate/envgate/proto/echopb"
)

// make soak: ten minutes of mixed load through the real binary, with
// backends stopped and restarted and attacks interleaved; it reports the
// calls that failed, peak RSS and the goroutines left at the end. It is
// not part of make test.

var soakDuration = flag.Duration("soak.duration", 10*time.Minute, "how long the soak runs")

// restartable is an echo backend that can be stopped and started again on
// the same address, as a pod restarting behind a static endpoint.
type restartable struct {
	addr, env string
	mu        sync.Mutex
	srv       *grpc.Server
}

func (r *restartable) start(t *testing.T) {
	addr := r.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	for range 50 { // the port may take a moment to be free again
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	r.addr = lis.Addr().String()
	srv := grpc.NewServer()
	echoserver.Register(srv, &echoserver.Server{Env: r.env, Addr: r.addr})
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
}

func (r *restartable) stop() {
	r.mu.Lock()
	srv := r.srv
	r.mu.Unlock()
	srv.Stop() // a crash: calls in flight fail
}

func TestSoak(t *testing.T) {
	var backends []*restartable
	for _, e := range []struct {
		env string
		n   int
	}{{"env1", 2}, {"env2", 1}} {
		for range e.n {
			r := &restartable{env: e.env}
			r.start(t)
			t.Cleanup(r.stop)
			backends = append(backends, r)
		}
	}
	static := map[string]string{
		"env1": backends[0].addr + ", " + backends[1].addr,
		"env2": backends[2].addr,
		"env3": stuckUpstream(t),
	}
	p, addr := gatewayProcessEnv(t, []string{"GOMEMLIMIT=200MiB"}, static, "accessLog: false\n")
	debugAddr := regexp.MustCompile(`"msg":"debug listening","address":"([^"]+)"`).FindStringSubmatch(p.output())[1]

	ctx, stop := context.WithTimeout(context.Background(), *soakDuration)
	defer stop()
	var (
		wg     sync.WaitGroup
		calls  atomic.Int64
		mu     sync.Mutex
		failed = map[string]int{}
	)
	count := func(err error) {
		calls.Add(1)
		if err == nil {
			return
		}
		mu.Lock()
		failed[status.Code(err).String()+": "+trim(status.Convert(err).Message())]++
		mu.Unlock()
	}
	// Ordinary traffic: unary calls and server streams to env1 and env2.
	for i := range 8 {
		c := echoClient(t, addr)
		env := []string{"env1", "env2"}[i%2]
		wg.Go(func() {
			for ctx.Err() == nil {
				cctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "env", env), 2*time.Second)
				if i%4 == 3 {
					ss, err := c.ServerStream(cctx, &echopb.EchoRequest{Count: 20, ResponseSize: 4096})
					for err == nil {
						_, err = ss.Recv()
					}
					if err == io.EOF {
						err = nil
					}
					if ctx.Err() == nil {
						count(err)
					}
				} else {
					_, err := c.Call(cctx, &echopb.EchoRequest{ResponseSize: 100})
					if ctx.Err() == nil {
						count(err)
					}
				}
				cancel()
			}
		})
	}
	// Backends crash and come back: every 20 s one of them, down 3 s.
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Second):
			}
			r := backends[i%len(backends)]
			r.stop()
			select {
			case <-ctx.Done():
			case <-time.After(3 * time.Second):
			}
			r.start(t)
		}
	})
	// Attacks in turn, one every 15 s.
	attacks := []func(){
		func() { rapidReset(t, addr, 3000) },
		func() {
			c := dialRaw(t, addr)
			c.sendHeaders(1, headerBlock(strings.Repeat("e", 16<<20)), true)
			c.closedWithin(5 * time.Second)
		},
		func() { neverRead(t, addr, 2, 100) },
		func() { stuckRequests(t, addr, 40) },
	}
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(15 * time.Second):
			}
			attacks[i%len(attacks)]()
		}
	})
	wg.Wait()
	time.Sleep(5 * time.Second) // let the attacks' connections close: a report, not a check
	goroutines := metric(t, debugAddr, "go_goroutines")
	peak := peakRSSMiB(t, p)
	var lines []string
	total := 0
	for k, v := range failed {
		lines = append(lines, fmt.Sprintf("%6d  %s", v, k))
		total += v
	}
	sort.Strings(lines)
	t.Logf("soak %v: %d calls, %d failed (%.3f%%); peak RSS %.1f MiB; %d goroutines at the end\n%s",
		*soakDuration, calls.Load(), total, 100*float64(total)/float64(max(calls.Load(), 1)), peak, goroutines, strings.Join(lines, "\n"))
	if peak > 222 {
		t.Errorf("peak RSS %.0f MiB over the 222 MiB GOMEMLIMIT=200MiB stands for", peak)
	}
}

func trim(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

// metric reads one gauge from the debug listener's /metrics.
func metric(t *testing.T, debugAddr, name string) int {
	resp, err := http.Get("http://" + debugAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /metrics", name)
	}
	f, _ := strconv.ParseFloat(string(m[1]), 64)
	return int(f)
}

// rapidReset opens and resets n streams on one connection.
func rapidReset(t *testing.T, addr string, n int) {
	c := dialRaw(t, addr)
	block := headerBlock("env1")
	for i := range n {
		id := uint32(1 + 2*i)
		if !c.sendHeaders(id, block, false) || !c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeCancel) }) {
			break
		}
	}
	c.nc.Close()
}

// neverRead holds streams 1 MiB responses unread on conns connections
// for a while, then leaves.
func neverRead(t *testing.T, addr string, conns, streams int) {
	cs := neverReadingClients(t, addr, conns, streams)
	time.Sleep(5 * time.Second) // an attacker that holds on for a while
	for _, c := range cs {
		c.nc.Close()
	}
}

// stuckRequests sends n 2 MiB requests to env3, whose upstream reads
// nothing, and gives up after 5 s.
func stuckRequests(t *testing.T, addr string, n int) {
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "env", "env3"), 5*time.Second)
	defer cancel()
	c := echoClient(t, addr)
	payload := make([]byte, 2<<20)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			cs, err := c.ClientStream(ctx)
			if err == nil && cs.Send(&echopb.EchoRequest{Payload: payload}) == nil {
				_, _ = cs.CloseAndRecv()
			}
		})
	}
	wg.Wait()
}
