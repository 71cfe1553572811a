package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/proto/echopb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// configMapVolume is a directory laid out as kubelet lays out a ConfigMap
// volume: config.yaml -> ..data/config.yaml, ..data -> a timestamped
// directory, and an update is a new directory and ..data swapped to it by
// a rename (pkg/volume/util/atomic_writer.go).
type configMapVolume struct {
	dir string
	n   int
}

func newConfigMapVolume(t *testing.T, body string) *configMapVolume {
	v := &configMapVolume{dir: t.TempDir()}
	v.update(t, body)
	if err := os.Symlink(filepath.Join("..data", "config.yaml"), filepath.Join(v.dir, "config.yaml")); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v *configMapVolume) path() string { return filepath.Join(v.dir, "config.yaml") }

func (v *configMapVolume) update(t *testing.T, body string) {
	t.Helper()
	v.n++
	ts := fmt.Sprintf("..2026_12_01_%06d", v.n)
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.dir, ts, "config.yaml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// reloadState reads /routes' account of the latest reload.
func reloadState(t *testing.T, gw *runningGateway) reloadStatus {
	t.Helper()
	var v struct {
		Config *reloadStatus `json:"config"`
	}
	if err := json.Unmarshal([]byte(scrape(t, gw, "/routes")), &v); err != nil {
		t.Fatal(err)
	}
	if v.Config == nil {
		return reloadStatus{}
	}
	return *v.Config
}

// Issue 14, point 4: the configuration is reloaded from a ConfigMap-style
// volume and on SIGHUP, 20 times under load on two environments with no
// failed call; an invalid file keeps the running configuration and is
// reported (log, metric, /routes); a field that needs a restart is named
// and the rest applied.
func TestConfigHotReloadUnderLoad(t *testing.T) {
	blue, green, env2 := startBackend(t, "blue"), startBackend(t, "green"), startBackend(t, "env2")
	conf := func(env1, extra string) string {
		return fmt.Sprintf(`listeners: [{address: '127.0.0.1:0'}]
admin: {address: '127.0.0.1:0', debugAddress: '127.0.0.1:0'}
accessLog: false
drainDelay: 1ms
discovery:
  static:
    env1: ['%s']
    env2: ['%s']
%s`, env1, env2.addr, extra)
	}
	vol := newConfigMapVolume(t, conf(blue.addr, ""))
	cfg, err := config.Load(vol.path())
	if err != nil {
		t.Fatal(err)
	}
	var logBuf lockedBuffer
	g, err := newGateway(cfg, slog.New(slog.NewJSONHandler(&logBuf, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	g.watchConfig(vol.path(), hup, nil)
	gw := runGateway(t, g)
	c := echoClient(t, gw.Addrs()[0])
	served := func(env string) string {
		ctx, cancel := context.WithTimeout(withEnv(context.Background(), env), 10*time.Second)
		defer cancel()
		resp, err := c.Call(ctx, &echopb.EchoRequest{})
		if err != nil {
			return err.Error()
		}
		return resp.GetMessage()
	}
	waitUntil(t, "env1 served by blue", func() bool { return strings.Contains(served("env1"), "ServerEnv:blue") })

	stop := make(chan struct{})
	loads := []*load{startLoad(t, c, "env1", 100, stop), startLoad(t, c, "env2", 100, stop)}
	for i := 1; i <= 20; i++ {
		to, name := green, "green"
		if i%2 == 0 {
			to, name = blue, "blue"
		}
		vol.update(t, conf(to.addr, fmt.Sprintf("# reload %d\n", i)))
		if i%4 == 1 {
			hup <- syscall.SIGHUP // as well as the file's change
		}
		waitUntil(t, fmt.Sprintf("reload %d: env1 served by %s", i, name), func() bool { return strings.Contains(served("env1"), "ServerEnv:"+name) })
		if st := reloadState(t, gw); !st.OK || st.File != vol.path() {
			t.Fatalf("reload %d: /routes says %+v", i, st)
		}
	}

	// An invalid file: reported, and the running configuration stays.
	vol.update(t, conf(blue.addr, "drainDelay: 5\n"))
	waitUntil(t, "the invalid file reported", func() bool {
		st := reloadState(t, gw)
		return !st.OK && strings.Contains(st.Error, "drainDelay: 5 has no unit")
	})
	if m := scrape(t, gw, "/metrics"); !strings.Contains(m, `envgate_config_reloads_total{result="error"} 1`) || !strings.Contains(m, "envgate_config_last_reload_successful 0") {
		t.Fatalf("metrics lack the failed reload:\n%s", grepLines(m, "envgate_config_"))
	}
	if !strings.Contains(logBuf.String(), `"msg":"config reload failed; the running configuration stays"`) {
		t.Fatal("no log line for the failed reload")
	}
	if got := served("env1"); !strings.Contains(got, "ServerEnv:blue") {
		t.Fatalf("after the invalid file env1 got %q, want blue still", got)
	}

	close(stop)
	for _, l := range loads {
		l.wait()
		l.check(t)
	}

	// A listener address needs a restart: named and kept, while the rest
	// (env1 to green, env2 gone) applies.
	vol.update(t, strings.Replace(strings.Replace(conf(green.addr, ""), "'127.0.0.1:0'}]", "'127.0.0.1:1'}]", 1), "    env2: ['"+env2.addr+"']\n", "", 1))
	waitUntil(t, "the listener named as needing a restart", func() bool {
		st := reloadState(t, gw)
		return st.OK && slices.Equal(st.RestartNeeded, []string{"listeners[0].address"})
	})
	if got := served("env1"); !strings.Contains(got, "ServerEnv:green") {
		t.Fatalf("env1 got %q, want green", got)
	}
	ctx, cancel := context.WithTimeout(withEnv(context.Background(), "env2"), 10*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, &echopb.EchoRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("env2 after its removal: %v, want Unimplemented (no route)", err)
	}
	if gw.Addrs()[0] == "127.0.0.1:1" {
		t.Fatal("the listener moved without a restart")
	}
}

// SIGHUP to the gateway process reloads its file (the signal, not only the
// watcher); with the embedded configuration it is logged, not fatal.
func TestSIGHUPReloads(t *testing.T) {
	be := startBackend(t, "env1")
	path := filepath.Join(t.TempDir(), "envgate.yaml")
	body := fmt.Sprintf("listeners: [{address: '127.0.0.1:0'}]\nadmin: {address: '127.0.0.1:0', debugAddress: '127.0.0.1:0'}\ndiscovery: {static: {env1: ['%s']}}\n", be.addr)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a file", []string{"-config", path}, `"msg":"config reloaded".*"trigger":"SIGHUP"`},
		{"the embedded configuration", nil, `"msg":"SIGHUP ignored: no configuration file to reload`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProcess(t, nil, builtBinary(t, "gateway"), tc.args...)
			p.waitLine(t, `"msg":"listening"`)
			if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			p.waitLine(t, tc.want)
		})
	}
}

// grepLines are the lines of s containing sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
