package main

import (
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/envgate/envgate/gateway/internal/config"
)

const validateUsage = `Usage: gateway validate [-config envgate.yaml] [file...]

Checks a configuration and the VirtualService and DestinationRule files it
names (and the files given as arguments) offline, as "istioctl analyze
--use-kube=false" does: every configuration mistake with its line, the
objects rejected, fields envgate does not implement, objects not bound to
the gateway, and destinations nothing will serve. Exits 1 on an error;
warnings and notes alone exit 0.

Flags:
`

// runValidate is `gateway validate`.
func runValidate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("gateway validate", validateUsage, stderr)
	configPath := fs.String("config", "", "YAML configuration file (default: the embedded demo configuration)")
	if done, err := parseFlags(fs, args, true); done || err != nil {
		return err
	}
	name := *configPath
	if name == "" {
		name = "the embedded configuration"
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err // each mistake with its line, from config.Parse
	}
	if files := fs.Args(); len(files) > 0 {
		// The files are checked as what the gateway would route by: the
		// configuration's own files and these, or these in place of the
		// cluster's objects.
		v := cfg.Routing.VirtualServices
		if v == nil {
			v = &config.VirtualServices{}
			cfg.Routing.VirtualServices = v
		}
		v.Kubernetes = false
		v.Files = append(v.Files, files...)
		cfg.Defaults()
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("config %s with the files: %w", name, err)
		}
	}
	fmt.Fprintf(stdout, "config %s: ok\n", name)
	v := cfg.Routing.VirtualServices
	if v == nil {
		fmt.Fprintf(stdout, "routing: one rule per environment %v on the %q header\n", cfg.Environments, cfg.Routing.Header)
		return nil
	}
	if v.Kubernetes {
		fmt.Fprintln(stdout, "note: routing.virtualServices.kubernetes: the cluster's objects are not read offline; give their files as arguments, or run gateway explain -kubeconfig against the cluster")
		return nil
	}
	table, vs, err := buildTable(cfg)
	if err != nil {
		return err
	}
	drs, err := destinationRuleFiles(v)
	if err != nil {
		return err
	}
	errs := 0
	for _, obj := range vs.Applied {
		fmt.Fprintf(stdout, "virtualservice %s: applied\n", obj)
	}
	for _, obj := range slices.Sorted(maps.Keys(vs.Rejected)) {
		errs++
		fmt.Fprintf(stdout, "error: virtualservice %s rejected: %s\n", obj, vs.Rejected[obj])
	}
	for _, is := range vs.Issues {
		if !is.Rejects {
			fmt.Fprintf(stdout, "warning: virtualservice %s\n", is)
		}
	}
	for _, obj := range slices.Sorted(maps.Keys(vs.Unbound)) {
		fmt.Fprintf(stdout, "note: virtualservice %s not bound to %s: %s\n", obj, v.Gateway, vs.Unbound[obj])
	}
	for _, obj := range drs.Applied {
		fmt.Fprintf(stdout, "destinationrule %s: applied\n", obj)
	}
	for _, obj := range slices.Sorted(maps.Keys(drs.Rejected)) {
		errs++
		fmt.Fprintf(stdout, "error: destinationrule %s rejected: %s\n", obj, drs.Rejected[obj])
	}
	for _, is := range drs.Issues {
		fmt.Fprintf(stdout, "warning: destinationrule %s: %s is not implemented\n", is.Object, is.Field)
	}
	for _, obj := range slices.Sorted(maps.Keys(drs.Unbound)) {
		fmt.Fprintf(stdout, "note: destinationrule %s not visible to the gateway: %s\n", obj, drs.Unbound[obj])
	}
	if static := cfg.StaticEndpoints(); cfg.Discovery.Static != nil {
		for _, r := range table.Rules() {
			for _, d := range r.Action.Destinations {
				if d.NoService == "" && len(static[d.Key()]) == 0 {
					fmt.Fprintf(stdout, "warning: %s sends to %s.%s, which has no static endpoints: it would answer 503 no healthy upstream\n", r.Source, d.Service, d.Namespace)
				}
			}
		}
	}
	if len(vs.Applied) == 0 {
		fmt.Fprintln(stdout, "warning: no VirtualService is applied: every request would get 404 (no route)")
	}
	if errs > 0 {
		return fmt.Errorf("validate: %d error(s)", errs)
	}
	return nil
}
