package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/envgate/envgate/gateway/internal/config"
	"github.com/envgate/envgate/gateway/internal/destinationrule"
	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/routing"
	"github.com/envgate/envgate/gateway/internal/virtualservice"
)

// explanation is what `gateway explain` and /explain say of one request.
type explanation = routing.Explanation

// explain serves /explain?method=/pkg.Svc/Method&authority=host&header=env:env1
func (g *gateway) explain(r *http.Request) any {
	q := r.URL.Query()
	headers := map[string][]string{}
	for _, h := range q["header"] {
		k, v, _ := strings.Cut(h, ":")
		k = strings.ToLower(strings.TrimSpace(k))
		headers[k] = append(headers[k], strings.TrimSpace(v))
	}
	method := q.Get("method")
	if method == "" {
		method = "/"
	}
	return g.routing.Explain(method, q.Get("authority"), headers, g.dialTargets)
}

// headerFlags collects repeated -H 'name: value'.
type headerFlags map[string][]string

func (h headerFlags) String() string { return "" }
func (h headerFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, ":")
	if !ok {
		return errors.New(`want "name: value"`)
	}
	k = strings.ToLower(strings.TrimSpace(k))
	h[k] = append(h[k], strings.TrimSpace(v))
	return nil
}

// runExplain is `gateway explain`: the decision for one request under a
// configuration, and why each earlier rule did not match.
func runExplain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("gateway explain", "", stderr)
	configPath := fs.String("config", "", "YAML configuration file (default: the embedded demo configuration)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig, with routing.virtualServices.kubernetes (default $KUBECONFIG, then in-cluster)")
	method := fs.String("method", "/echo.EchoService/Call", "the call's /package.Service/Method")
	authority := fs.String("authority", "", "the call's :authority")
	headers := headerFlags{}
	fs.Var(headers, "H", `a request header, "name: value" (repeatable)`)
	if done, err := parseFlags(fs, args, false); done || err != nil {
		return err
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	if *kubeconfig != "" && cfg.Discovery.Kubernetes != nil {
		cfg.Discovery.Kubernetes.Kubeconfig = *kubeconfig
	}
	t, vs, err := buildTable(cfg)
	if err != nil {
		return err
	}
	if v := cfg.Routing.VirtualServices; v != nil && v.Kubernetes {
		// Explain against the cluster's VirtualServices as they are now.
		if t, vs, err = clusterTable(ctx, cfg); err != nil {
			return err
		}
	}
	var drs *destinationrule.Result
	if v := cfg.Routing.VirtualServices; v != nil {
		if v.Kubernetes {
			drs, err = clusterDestinationRules(ctx, cfg)
		} else {
			drs, err = destinationRuleFiles(v)
		}
		if err != nil {
			return err
		}
	}
	e := routing.Explain(t, vs, *method, *authority, headers)
	fmt.Fprintf(stdout, "request: %s, authority %q, headers %v\n", e.Method, e.Authority, map[string][]string(headers))
	if e.VirtualHost != "" {
		fmt.Fprintf(stdout, "virtual host: %s\n", e.VirtualHost)
	}
	for i, s := range e.Steps {
		verdict := "no match"
		if s.Matched {
			verdict = "MATCH"
		}
		fmt.Fprintf(stdout, "rule %d %s: %s: %s\n", i+1, s.Rule, verdict, s.Why)
	}
	fmt.Fprintf(stdout, "decision: %s\n", e.Decision)
	for _, is := range e.Issues {
		fmt.Fprintf(stdout, "note: %s\n", is)
	}
	for obj, why := range e.Rejected {
		fmt.Fprintf(stdout, "rejected: %s: %s\n", obj, why)
	}
	for obj, why := range e.Unbound {
		fmt.Fprintf(stdout, "not bound: %s: %s\n", obj, why)
	}
	if drs != nil {
		fmt.Fprintf(stdout, "destinationrules in force: %v\n", drs.Applied)
		for obj, why := range drs.Rejected {
			fmt.Fprintf(stdout, "destinationrule rejected: %s: %s\n", obj, why)
		}
		for obj, why := range drs.Unbound {
			fmt.Fprintf(stdout, "destinationrule not visible: %s: %s\n", obj, why)
		}
	}
	return nil
}

// clusterDestinationRules lists the cluster's DestinationRules once and
// merges them.
func clusterDestinationRules(ctx context.Context, cfg *config.Config) (*destinationrule.Result, error) {
	rc, err := kubeConfig(cfg.Discovery.Kubernetes.Kubeconfig)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	list, err := dyn.Resource(destinationrule.GVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list DestinationRules: %w", err)
	}
	var objs []*destinationrule.Object
	for _, item := range list.Items {
		o, err := destinationrule.FromMap(item.Object)
		if err != nil {
			return nil, err
		}
		objs = append(objs, o)
	}
	return destinationrule.Build(objs, cfg.Routing.VirtualServices.ProxyNamespace), nil
}

// clusterTable lists the cluster's VirtualServices once and merges them.
func clusterTable(ctx context.Context, cfg *config.Config) (*route.Table, *virtualservice.Result, error) {
	rc, err := kubeConfig(cfg.Discovery.Kubernetes.Kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	list, err := dyn.Resource(virtualservice.GVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list VirtualServices: %w", err)
	}
	var objs []*virtualservice.Object
	for _, item := range list.Items {
		o, err := virtualservice.FromMap(item.Object)
		if err != nil {
			return nil, nil, err
		}
		objs = append(objs, o)
	}
	res := virtualservice.Build(objs, vsOptions(cfg))
	return route.NewHostTable(res.Hosts), res, nil
}
