package main

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// h2specFailures runs h2spec (the HTTP/2 conformance suite, bin/h2spec)
// against an h2c address and returns the cases that failed, "section |
// case". It may run on any goroutine: it reports problems as an error.
func h2specFailures(h2spec, dir, addr string, timeout int, sections ...string) ([]string, error) {
	_, port, _ := strings.Cut(addr, ":")
	report := filepath.Join(dir, fmt.Sprintf("%s-%d.xml", port, time.Now().UnixNano()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// h2spec exits non-zero when a case fails; the report says which.
	args := append(sections, "-h", "127.0.0.1", "-p", port, "-o", fmt.Sprint(timeout), "-j", report)
	_ = exec.CommandContext(ctx, h2spec, args...).Run()
	b, err := os.ReadFile(report)
	if err != nil {
		return nil, fmt.Errorf("h2spec against %s wrote no report: %w", addr, err)
	}
	var r struct {
		Suites []struct {
			Cases []struct {
				Package string    `xml:"package,attr"`
				Name    string    `xml:"classname,attr"`
				Failure *struct{} `xml:"failure"`
				Error   *struct{} `xml:"error"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	var failed []string
	total := 0
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			total++
			if c.Failure != nil || c.Error != nil {
				failed = append(failed, c.Package+" | "+c.Name)
			}
		}
	}
	if total < 100 && len(sections) == 0 {
		return nil, fmt.Errorf("h2spec ran %d cases against %s, want the whole suite", total, addr)
	}
	slices.Sort(failed)
	return failed, nil
}

// envgate's HTTP/2 conformance is its gRPC server's: h2spec finds no case
// that fails through envgate and passes against a grpc-go server with the
// same stream limit (envgate's server is grpc-go's, and the cases grpc-go
// fails are its own: h2spec's plain GET requests get a gRPC answer, not the
// HTTP one h2spec waits for).
func TestH2SpecNoWorseThanGRPCGo(t *testing.T) {
	b := startBackend(t, "env1", grpc.MaxConcurrentStreams(1000))
	_, addr := gatewayProcess(t, map[string]string{"env1": b.addr}, "accessLog: false\n")
	h2spec, dir := tool(t, "h2spec"), t.TempDir()
	var direct, through []string
	var errDirect, errThrough error
	var wg sync.WaitGroup
	wg.Go(func() { direct, errDirect = h2specFailures(h2spec, dir, b.addr, 2) })
	wg.Go(func() { through, errThrough = h2specFailures(h2spec, dir, addr, 2) })
	wg.Wait()
	if err := errors.Join(errDirect, errThrough); err != nil {
		t.Fatal(err)
	}
	var worse []string
	for _, f := range through {
		if slices.Contains(direct, f) {
			continue
		}
		// h2spec waits 2 s for an answer, and make test runs packages
		// side by side: a case that timed out is run again, alone and
		// with 10 s, before it counts.
		section, _, _ := strings.Cut(f, " | ")
		again, err := h2specFailures(h2spec, dir, addr, 10, section)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(again, f) {
			worse = append(worse, f)
		} else {
			t.Logf("%s: failed once, passed alone", f)
		}
	}
	t.Logf("h2spec: %d cases fail against grpc-go, %d through envgate", len(direct), len(through))
	if len(worse) > 0 {
		t.Fatalf("cases that fail through envgate and pass against grpc-go:\n%s", strings.Join(worse, "\n"))
	}
}
