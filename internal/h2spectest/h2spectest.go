// Package h2spectest runs h2spec, the HTTP/2 conformance suite the
// Makefile installs into ./bin, for the tests that hold envgate's HTTP/2
// servers to it.
package h2spectest

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Bin is the directory the Makefile installs pinned tools into: ENVGATE_BIN,
// or bin beside the go.mod above the test's directory.
func Bin(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("ENVGATE_BIN"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "bin")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// Failures runs h2spec against an h2c address (the whole suite, or the
// sections named) with a timeout in seconds per case, writing its report
// in dir, and returns the cases that failed as "section | case". It may
// run on any goroutine: it reports problems as an error.
func Failures(h2spec, dir, addr string, timeout int, sections ...string) ([]string, error) {
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
