package config

import (
	"slices"
	"testing"
)

// What a reload may change at once and what waits for a restart (issue
// 14, point 4).
func TestReloaded(t *testing.T) {
	boot := mustParse(t, `
listeners: [{address: '127.0.0.1:8080'}]
discovery: {static: {env1: ['127.0.0.1:1'], env2: ['127.0.0.1:2']}}
routing: {header: env}
drainDelay: 1s
`)
	for _, tc := range []struct {
		name    string
		next    string
		restart []string
	}{
		{"live fields only", `
listeners: [{address: '127.0.0.1:8080'}]
discovery: {static: {env1: ['127.0.0.1:3'], env3: ['127.0.0.1:4']}}
routing: {header: env, baseline: env1}
drainDelay: 2s
`, nil},
		{"a listener moved and a limit changed", `
listeners: [{address: '127.0.0.1:9090'}]
discovery: {static: {env1: ['127.0.0.1:3']}}
limits: {maxConnections: 10}
routing: {header: x-env}
`, []string{"listeners[0].address", "routing.header", "limits.maxConnections"}},
		{"another discovery", `
listeners: [{address: '127.0.0.1:8080'}]
environments: [env1]
discovery: {dns: {}}
`, []string{"environments", "discovery.static", "discovery.dns"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := mustParse(t, tc.next)
			live, restart := boot.Reloaded(next)
			if !slices.Equal(restart, tc.restart) {
				t.Fatalf("restart %v, want %v", restart, tc.restart)
			}
			if live.Routing.Header != boot.Routing.Header || live.DrainDelay != next.DrainDelay || live.Routing.Baseline != next.Routing.Baseline {
				t.Errorf("live routing %+v drain %v: want boot's header, next's baseline and drain", live.Routing, live.DrainDelay)
			}
			if live.Listeners[0].Address != "127.0.0.1:8080" || live.Limits.MaxConnections != boot.Limits.MaxConnections {
				t.Errorf("restart-only fields changed live: %+v %+v", live.Listeners, live.Limits)
			}
			if next.Discovery.Static != nil && !slices.Equal(live.Environments, next.Environments) {
				t.Errorf("environments %v, want %v", live.Environments, next.Environments)
			}
		})
	}
}

func mustParse(t *testing.T, y string) *Config {
	t.Helper()
	c, err := Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
