package main

import (
	"fmt"
	"os"
	"slices"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/destinationrule"
	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/virtualservice"
)

// buildTable makes the routing table the configuration asks for: the
// one-header form, or the merged VirtualServices of the configured files.
// With VirtualServices it also returns what was applied, reported and
// rejected, and the namespaces the rules send to.
func buildTable(cfg *config.Config) (*route.Table, *virtualservice.Result, error) {
	vsCfg := cfg.Routing.VirtualServices
	if vsCfg == nil {
		t, err := cfg.Table()
		return t, nil, err
	}
	if vsCfg.Kubernetes {
		// Filled in by the watcher once it has synced; until then nothing
		// routes (and the gateway is not ready).
		return route.NewTable(nil), &virtualservice.Result{Rejected: map[string]string{}, Unbound: map[string]string{}}, nil
	}
	var objs []*virtualservice.Object
	for _, f := range vsCfg.Files {
		r, err := os.Open(f)
		if err != nil {
			return nil, nil, fmt.Errorf("virtualServices: %w", err)
		}
		o, err := virtualservice.Parse(r, vsCfg.Namespace)
		_ = r.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("virtualServices %s: %w", f, err)
		}
		objs = append(objs, o...)
	}
	res := virtualservice.Build(objs, vsOptions(cfg))
	return route.NewHostTable(res.Hosts), res, nil
}

// destinationRuleFiles merges the DestinationRules of the VirtualService
// files (the same files hold both kinds, as kubectl apply -f does).
func destinationRuleFiles(v *config.VirtualServices) (*destinationrule.Result, error) {
	var objs []*destinationrule.Object
	for _, f := range v.Files {
		r, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("virtualServices: %w", err)
		}
		o, err := destinationrule.Parse(r, v.Namespace)
		_ = r.Close()
		if err != nil {
			return nil, fmt.Errorf("destinationRules %s: %w", f, err)
		}
		objs = append(objs, o...)
	}
	return destinationrule.Build(objs, v.ProxyNamespace), nil
}

func vsOptions(cfg *config.Config) virtualservice.Options {
	v := cfg.Routing.VirtualServices
	o := virtualservice.Options{Gateway: v.Gateway, ProxyNamespace: v.ProxyNamespace}
	switch {
	case cfg.Discovery.Kubernetes != nil:
		// Kubernetes discovery follows routing.service and the services
		// it lists; DNS routing.service only; static endpoints may name
		// any service (service.namespace).
		o.Services = append([]string{cfg.Routing.Service}, cfg.Discovery.Kubernetes.Services...)
	case cfg.Discovery.DNS != nil:
		o.Services = []string{cfg.Routing.Service}
	}
	return o
}

// namespacesOf are the namespaces a table's rules send to, sorted.
func namespacesOf(t *route.Table) []string {
	var out []string
	for _, r := range t.Rules() {
		for _, d := range r.Action.Destinations {
			if d.NoService == "" && !slices.Contains(out, d.Namespace) {
				out = append(out, d.Namespace)
			}
		}
	}
	slices.Sort(out)
	return out
}
