package config

import (
	"fmt"
	"reflect"
	"strings"
)

// Reloaded is the configuration a running gateway booted with c moves to
// when its file now says next: next's live fields (those a gateway swaps
// in without dropping a call: the baseline, the environments and static
// endpoints, the VirtualService files, the drain times) over c's, and the paths of next's other changes, which take
// effect only at a restart and are kept as c has them.
func (c *Config) Reloaded(next *Config) (live *Config, restart []string) {
	l := *c
	// The header and port stay: the access log names the header's value
	// and discovery keys endpoint sets by the port.
	l.Routing.Baseline = next.Routing.Baseline
	l.DrainDelay, l.ShutdownGrace = next.DrainDelay, next.ShutdownGrace
	// Static endpoints are the store's to replace; Kubernetes and DNS
	// discovery follow the namespaces they started with.
	if c.Discovery.Static != nil && next.Discovery.Static != nil {
		l.Discovery.Static, l.Environments = next.Discovery.Static, next.Environments
	}
	if v, n := c.Routing.VirtualServices, next.Routing.VirtualServices; v != nil && n != nil && !v.Kubernetes && !n.Kubernetes {
		vs := *v
		vs.Files = n.Files
		l.Routing.VirtualServices = &vs
	}
	return &l, diffPaths("", reflect.ValueOf(l), reflect.ValueOf(*next))
}

// diffPaths are the YAML paths where a and b (values of one type) differ.
func diffPaths(path string, a, b reflect.Value) []string {
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				return []string{path}
			}
			return nil
		}
		return diffPaths(path, a.Elem(), b.Elem())
	case reflect.Struct:
		var out []string
		for i := 0; i < a.NumField(); i++ {
			name, _, _ := strings.Cut(a.Type().Field(i).Tag.Get("yaml"), ",")
			out = append(out, diffPaths(join(path, name), a.Field(i), b.Field(i))...)
		}
		return out
	case reflect.Slice:
		if a.Len() != b.Len() {
			return []string{path}
		}
		var out []string
		for i := 0; i < a.Len(); i++ {
			out = append(out, diffPaths(fmt.Sprintf("%s[%d]", path, i), a.Index(i), b.Index(i))...)
		}
		return out
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		return []string{path}
	}
	return nil
}
