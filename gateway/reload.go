package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/destinationrule"
	"github.com/envgate/envgate/gateway/internal/dirwatch"
	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/virtualservice"
)

// reloadDebounce lets an editor's or kubelet's several writes land before
// the file is read: a ConfigMap update is a new directory, then the
// ..data symlink swapped to it.
const reloadDebounce = 100 * time.Millisecond

// reloadStatus is what /routes says of the configuration file.
type reloadStatus struct {
	File string    `json:"file"`
	At   time.Time `json:"at"`
	// Trigger is what started the latest reload: "file" or "SIGHUP".
	Trigger string `json:"trigger"`
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	// RestartNeeded are the changed fields that take effect only at a
	// restart; the running values are kept.
	RestartNeeded []string `json:"restartNeeded,omitempty"`
}

// watchConfig has Run reload the configuration from path when the file,
// its directory's ..data (a ConfigMap volume) or a VirtualService file
// changes, and on every value from hup (SIGHUP). flags, when not nil,
// applies the command line's overrides to each configuration read.
func (g *gateway) watchConfig(path string, hup <-chan os.Signal, flags func(*config.Config)) {
	g.background = append(g.background, func(ctx context.Context) error { return g.watch(ctx, path, hup, flags) })
}

func (g *gateway) watch(ctx context.Context, path string, hup <-chan os.Signal, flags func(*config.Config)) error {
	if path == "" {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-hup:
				g.log.Warn("SIGHUP ignored: no configuration file to reload (the embedded one is in use)")
			}
		}
	}
	// dirwatch, not fsnotify: a directory's every write (a log beside the
	// file) would wake this loop.
	w, err := dirwatch.New()
	if err != nil {
		return fmt.Errorf("config watch: %w", err)
	}
	defer w.Close()
	files := g.reloadFiles(path)
	// Directories are watched, not files: an editor's rename and a
	// ConfigMap's symlink swap replace the file a watch would hold.
	names := map[string]bool{"..data": true}
	for _, f := range files {
		dir := filepath.Dir(f)
		if err := w.Add(dir); err != nil {
			g.log.Warn("config changes are not watched; SIGHUP reloads", "dir", dir, "error", err)
		}
		names[filepath.Base(f)] = true
	}
	applied := digest(files)
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Name == "" || names[filepath.Base(ev.Name)] { // "": events were lost
				debounce.Reset(reloadDebounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			g.log.Warn("config watch", "error", err)
		case <-debounce.C:
			// A change of mode or time alone is no reload.
			if d := digest(g.reloadFiles(path)); d != applied {
				applied = d
				g.reload(path, "file", flags)
			}
		case <-hup:
			applied = digest(g.reloadFiles(path))
			g.reload(path, "SIGHUP", flags)
		}
	}
}

// reloadFiles are the files a reload reads: the configuration and the
// VirtualService files of the running configuration.
func (g *gateway) reloadFiles(path string) []string {
	files := []string{path}
	if v := g.config().Routing.VirtualServices; v != nil && !v.Kubernetes {
		files = append(files, v.Files...)
	}
	return files
}

// digest is a hash of the files' contents (unreadable files count as
// empty: the reload will report them).
func digest(files []string) [32]byte {
	h := sha256.New()
	for _, f := range files {
		b, _ := os.ReadFile(f)
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// reload reads the configuration at path and applies it; an invalid one
// leaves the running configuration in force, reported in the log, the
// metrics and /routes.
func (g *gateway) reload(path, trigger string, flags func(*config.Config)) {
	st := reloadStatus{File: path, At: time.Now(), Trigger: trigger}
	next, err := config.Load(path)
	if err == nil {
		if flags != nil {
			flags(next)
		}
		st.RestartNeeded, err = g.apply(next)
	}
	st.OK = err == nil
	if err != nil {
		st.Error = err.Error()
		g.log.Error("config reload failed; the running configuration stays", "file", path, "trigger", trigger, "error", err)
	} else {
		g.log.Info("config reloaded", "file", path, "trigger", trigger, "restart_needed", st.RestartNeeded)
	}
	g.metrics.ConfigReloaded(err)
	g.reloaded.Store(&st)
}

// apply swaps in next's live part whole: everything it needs is built
// before anything changes, endpoints are added before the table that
// routes to them and removed after, so no call finds a half-applied
// configuration.
func (g *gateway) apply(next *config.Config) (restart []string, err error) {
	live, restart := g.cfg.Reloaded(next)
	if err := live.Validate(); err != nil {
		return nil, fmt.Errorf("the new configuration does not fit the running one (restart to apply it whole): %w", err)
	}
	var (
		table *route.Table
		vs    *virtualservice.Result
		drs   *destinationrule.Result
	)
	if v := live.Routing.VirtualServices; v != nil && !v.Kubernetes {
		if table, vs, err = buildTable(live); err != nil {
			return nil, err
		}
		if drs, err = destinationRuleFiles(v); err != nil {
			return nil, err
		}
	}
	g.tableMu.Lock()
	defer g.tableMu.Unlock()
	// With static discovery the environments are the file's; Kubernetes
	// and DNS discovery keep the ones they follow.
	if vs == nil && !g.routing.VirtualServiceMode() && live.Discovery.Static != nil {
		if table, err = live.TableFor(live.Environments); err != nil {
			return nil, err
		}
	}
	var stale []string
	if live.Discovery.Static != nil {
		eps := live.StaticEndpoints()
		for key, addrs := range eps {
			g.store.Set(key, addrs)
		}
		for key := range g.config().StaticEndpoints() {
			if _, ok := eps[key]; !ok {
				stale = append(stale, key)
			}
		}
	}
	g.cur.Store(live)
	switch {
	case vs != nil:
		g.routing.ApplyVirtualServices(vs)
		g.routing.ApplyDestinationRules(drs)
	case table != nil:
		g.routing.SetTable(table)
	}
	for _, key := range stale {
		g.store.Delete(key)
	}
	slices.Sort(restart)
	return restart, nil
}
