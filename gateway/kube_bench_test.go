package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/envgate/envgate/internal/kubetest"
	"github.com/envgate/envgate/proto/echopb"
)

// BenchmarkKubeEndpointChangeToFirstCall measures, over 50 changes, the time
// from an EndpointSlice gaining a ready endpoint (as a watch on the API server
// sees it) to the first call that lands on it, under a steady stream of
// calls. Run it with -benchtime=1x: each run makes all 50 changes.
func BenchmarkKubeEndpointChangeToFirstCall(b *testing.B) {
	for b.Loop() {
		benchEndpointChange(b)
	}
}

func benchEndpointChange(b *testing.B) {
	bt := b
	k := startKubeEnv(bt, func(k *kubeEnv) { k.environment(bt, "env1", 2) })
	k.waitEndpoints(bt, "env1", 2)

	// When each address first appears ready in a slice, as the API server
	// tells a watcher.
	var mu sync.Mutex
	seen := map[string]time.Time{}
	factory := informers.NewSharedInformerFactory(k.cp.Admin, 0)
	inf := factory.Discovery().V1().EndpointSlices().Informer()
	record := func(obj any) {
		s, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			return
		}
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
				for _, a := range ep.Addresses {
					if _, ok := seen[a]; !ok {
						seen[a] = now
					}
				}
			}
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: record, UpdateFunc: func(_, o any) { record(o) }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	// A steady stream of calls: 4 callers back to back.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(withEnv(ctx, "env1"), 5*time.Second)
				_, _ = k.echo.Call(cctx, &echopb.EchoRequest{})
				ccancel()
			}
		})
	}
	defer wg.Wait()
	defer cancel()

	var lat []time.Duration
	ahead := 0 // first calls served before the reference watcher saw the slice
	for i := range 50 {
		p := k.net.addPod(bt, k.cp, "env1", fmt.Sprintf("change-%d", i), true)
		first := waitFirstCall(bt, p)
		// The reference watcher and the gateway get the change
		// independently; the gateway may be the quicker of the two.
		var at time.Time
		waitUntilWithin(bt, 10*time.Second, fmt.Sprintf("change %d: the slice with %s", i, p.ip), func() bool {
			mu.Lock()
			defer mu.Unlock()
			t, ok := seen[p.ip]
			at = t
			return ok
		})
		d := first.Sub(at)
		if d < 0 {
			ahead++
			d = 0
		}
		lat = append(lat, d)
		k.cp.DeletePod(bt, "env1", p.name)
		k.waitEndpoints(bt, "env1", 2)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(lat[0].Microseconds())/1000, "min-ms")
	b.ReportMetric(float64(ahead), "ahead-of-reference")
}

// waitFirstCall returns when the pod's server answered its first call.
func waitFirstCall(t testing.TB, p *pod) time.Time {
	t.Helper()
	p.backend.waitCall(t)
	return time.Now()
}

// BenchmarkKubeDiscoveryAtScale runs the gateway binary against 500
// environment namespaces of 3 pods each and reports its resident memory
// once synced and idle, its CPU while idle, and its CPU and peak memory
// during a churn of 10 pod readiness changes per second.
func BenchmarkKubeDiscoveryAtScale(b *testing.B) {
	for b.Loop() {
		benchScale(b)
	}
}

func benchScale(b *testing.B) {
	const namespaces, podsPer, churnPerSec = 500, 3, 10
	const window = 30 * time.Second
	bt := b
	cp := kubetest.Start(bt)
	kubeconfig := applyRBAC(bt, cp)

	created := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range namespaces {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ns := fmt.Sprintf("env%d", i)
			cp.EnsureNamespace(bt, ns, map[string]string{envLabel: "true"})
			cp.CreateService(bt, ns, "app-service", "grpc", 50051)
			for j := range podsPer {
				// RFC 2544's benchmarking range; nothing dials these.
				n := i*podsPer + j
				cp.AddPod(bt, ns, fmt.Sprintf("app-%d", j), "app-service", "grpc", 50051, fmt.Sprintf("198.18.%d.%d", n/250, n%250+1), true)
			}
		})
	}
	wg.Wait()
	b.Logf("created %d namespaces, %d pods in %v", namespaces, namespaces*podsPer, time.Since(created).Round(time.Millisecond))
	// The idle figure is taken with every slice in place.
	waitUntil(bt, "the EndpointSlice controller to publish every pod", func() bool {
		list, err := cp.Admin.DiscoveryV1().EndpointSlices("").List(context.Background(), metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=app-service"})
		if err != nil {
			return false
		}
		ready := 0
		for _, s := range list.Items {
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					ready++
				}
			}
		}
		return ready == namespaces*podsPer
	})
	b.Logf("every endpoint published after %v", time.Since(created).Round(time.Millisecond))

	cfgFile := filepath.Join(b.TempDir(), "envgate.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
listeners: [{address: 127.0.0.1:0}]
admin: {address: 127.0.0.1:0, debugAddress: 127.0.0.1:0}
accessLog: false
discovery: {kubernetes: {kubeconfig: %s}}
`, kubeconfig)), 0o600); err != nil {
		b.Fatal(err)
	}
	gw := startProcess(bt, nil, builtBinary(bt, "gateway"), "-config", cfgFile)
	start := time.Now()
	gw.waitLine(bt, `"msg":"kubernetes discovery synced","environments":`+strconv.Itoa(namespaces))
	b.Logf("gateway synced %d environments in %v", namespaces, time.Since(start).Round(time.Millisecond))
	pid := gw.cmd.Process.Pid

	cpu0 := procCPU(bt, pid)
	time.Sleep(window) // the idle window being measured
	idleCPU := procCPU(bt, pid) - cpu0
	idleRSS := procStatus(bt, pid, "VmRSS")

	tick := time.NewTicker(time.Second / churnPerSec)
	defer tick.Stop()
	cpu1 := procCPU(bt, pid)
	end := time.Now().Add(window)
	changes := 0
	for time.Now().Before(end) {
		<-tick.C
		ns := fmt.Sprintf("env%d", changes%namespaces)
		cp.SetPodReady(bt, ns, "app-0", changes/namespaces%2 == 1)
		changes++
	}
	churnCPU := procCPU(bt, pid) - cpu1
	peakRSS := procStatus(bt, pid, "VmHWM")

	b.ReportMetric(float64(idleRSS)/1024, "idle-RSS-MB")
	b.ReportMetric(float64(peakRSS)/1024, "peak-RSS-MB")
	b.ReportMetric(idleCPU.Seconds()/window.Seconds()*100, "idle-CPU-%")
	b.ReportMetric(churnCPU.Seconds()/window.Seconds()*100, "churn-CPU-%")
	b.Logf("%d changes in %v", changes, window)
}

// procCPU is utime+stime of a process.
func procCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	tick := 100 // USER_HZ on Linux
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		tick, _ = strconv.Atoi(strings.TrimSpace(string(out)))
	}
	return time.Duration(ut+st) * time.Second / time.Duration(tick)
}

// procStatus reads a kB field of /proc/PID/status.
func procStatus(t testing.TB, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
