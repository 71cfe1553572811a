// Package virtualservice turns Istio VirtualService objects into routing
// rules with the semantics Istio gives them at an ingress gateway: the
// objects bound to one gateway merged in creation order (ties by name, then
// namespace), their HTTP routes in order, catch-all routes moved last.
// Fields envgate does not implement are reported by name; an object with a
// field that would change where a call goes is rejected whole, never half
// applied.
package virtualservice

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/envgate/envgate/gateway/internal/istioyaml"
	"github.com/envgate/envgate/gateway/internal/route"
)

// Object is one VirtualService as decoded from YAML or the API.
type Object struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Spec       Spec     `json:"spec"`
	// raw keeps every field, to find the ones envgate does not implement.
	raw map[string]any
}

// Metadata is the part of ObjectMeta the merge order needs.
type Metadata struct {
	Name              string    `json:"name"`
	Namespace         string    `json:"namespace"`
	CreationTimestamp time.Time `json:"creationTimestamp"`
}

// Spec is the implemented part of the VirtualService spec.
type Spec struct {
	Hosts    []string    `json:"hosts"`
	Gateways []string    `json:"gateways"`
	HTTP     []HTTPRoute `json:"http"`
	ExportTo []string    `json:"exportTo"`
}

// HTTPRoute is one rule.
type HTTPRoute struct {
	Name    string            `json:"name"`
	Match   []MatchRequest    `json:"match"`
	Route   []RouteDest       `json:"route"`
	Timeout string            `json:"timeout"`
	Retries *Retry            `json:"retries"`
	Headers *HeaderOperations `json:"headers"`
	// Rewrite, Redirect and DirectResponse are Istio's HTTPRewrite,
	// HTTPRedirect and HTTPDirectResponse.
	Rewrite        *Rewrite        `json:"rewrite"`
	Redirect       *Redirect       `json:"redirect"`
	DirectResponse *DirectResponse `json:"directResponse"`
}

// Rewrite is Istio's HTTPRewrite (uriRegexRewrite is not implemented).
type Rewrite struct {
	URI       string `json:"uri"`
	Authority string `json:"authority"`
}

// Redirect is Istio's HTTPRedirect (prefixRewrite is not implemented).
type Redirect struct {
	URI          string `json:"uri"`
	Authority    string `json:"authority"`
	Port         uint32 `json:"port"`
	DerivePort   string `json:"derivePort"`
	Scheme       string `json:"scheme"`
	RedirectCode uint32 `json:"redirectCode"`
}

// DirectResponse is Istio's HTTPDirectResponse.
type DirectResponse struct {
	Status uint32 `json:"status"`
	Body   *struct {
		String *string `json:"string"`
		Bytes  []byte  `json:"bytes"`
	} `json:"body"`
}

// Retry is Istio's HTTPRetry.
type Retry struct {
	Attempts      int    `json:"attempts"`
	PerTryTimeout string `json:"perTryTimeout"`
	RetryOn       string `json:"retryOn"`
}

// MatchRequest is one match block.
type MatchRequest struct {
	Name           string                 `json:"name"`
	URI            *StringMatch           `json:"uri"`
	Authority      *StringMatch           `json:"authority"`
	Method         *StringMatch           `json:"method"`
	Headers        map[string]StringMatch `json:"headers"`
	WithoutHeaders map[string]StringMatch `json:"withoutHeaders"`
}

// StringMatch is Istio's StringMatch; none set means presence.
type StringMatch struct {
	Exact  *string `json:"exact"`
	Prefix *string `json:"prefix"`
	Regex  *string `json:"regex"`
}

// RouteDest is a weighted destination.
type RouteDest struct {
	Destination struct {
		Host string `json:"host"`
		Port *struct {
			Number uint32 `json:"number"`
		} `json:"port"`
		Subset string `json:"subset"`
	} `json:"destination"`
	Weight *int32 `json:"weight"`
}

// HeaderOperations are request and response header changes.
type HeaderOperations struct {
	Request  *HeaderOps `json:"request"`
	Response *HeaderOps `json:"response"`
}

// HeaderOps is Istio's HeaderOperations.
type HeaderOps struct {
	Set    map[string]string `json:"set"`
	Add    map[string]string `json:"add"`
	Remove []string          `json:"remove"`
}

// Name is namespace/name.
func (o *Object) Name() string { return o.Metadata.Namespace + "/" + o.Metadata.Name }

// Parse decodes every VirtualService in a multi-document YAML or JSON
// stream; other kinds are skipped. Objects without a namespace get def.
func Parse(r io.Reader, def string) ([]*Object, error) {
	return istioyaml.Objects(r, "VirtualService", def, FromMap)
}

// FromMap builds an Object from its decoded form (as the dynamic client
// returns it).
func FromMap(raw map[string]any) (*Object, error) {
	obj := &Object{raw: raw}
	if err := istioyaml.Into(raw, obj); err != nil {
		return nil, fmt.Errorf("virtualservice: %w", err)
	}
	return obj, nil
}

// Fields envgate implements, per level; anything else is reported.
var (
	knownSpec     = []string{"hosts", "gateways", "http", "exportTo"}
	knownHTTP     = []string{"name", "match", "route", "timeout", "retries", "headers", "rewrite", "redirect", "directResponse"}
	knownRewrite  = []string{"uri", "authority"}
	knownRedirect = []string{"uri", "authority", "port", "derivePort", "scheme", "redirectCode"}
	knownDirect   = []string{"status", "body"}
	knownRetry    = []string{"attempts", "perTryTimeout", "retryOn"}
	knownMatch    = []string{"name", "uri", "authority", "method", "headers", "withoutHeaders"}
	knownRoute    = []string{"destination", "weight"}
	// Unimplemented fields that only add behaviour (envgate routes the call
	// the same way without them): reported, the object still applies.
	// Any other unimplemented field could change where a call goes, and
	// rejects the object.
	harmless = []string{"corsPolicy", "mirror", "mirrors", "mirrorPercentage", "mirrorPercent", "statPrefix", "headers", "retryRemoteLocalities"}
)

// Issue is an unimplemented field of an object.
type Issue struct {
	Object string // namespace/name
	Field  string // e.g. spec.http[0].fault
	// Rejects is true when the field could change routing, so the whole
	// object is left out.
	Rejects bool
	// Note, when set, is what Istio does with the field instead (the field
	// is implemented and has no effect).
	Note string
}

func (i Issue) String() string {
	if i.Note != "" {
		return fmt.Sprintf("%s: %s: %s", i.Object, i.Field, i.Note)
	}
	if i.Rejects {
		return fmt.Sprintf("%s: %s is not implemented and would change routing: object rejected", i.Object, i.Field)
	}
	return fmt.Sprintf("%s: %s is not implemented: ignored", i.Object, i.Field)
}

// unimplemented lists the fields of the object envgate does not implement.
func (o *Object) unimplemented() []Issue {
	var out []Issue
	report := func(path string, m map[string]any, known []string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !slices.Contains(known, k) {
				out = append(out, Issue{Object: o.Name(), Field: path + "." + k, Rejects: !slices.Contains(harmless, k)})
			}
		}
	}
	spec, _ := o.raw["spec"].(map[string]any)
	report("spec", spec, knownSpec)
	https, _ := spec["http"].([]any)
	for i, h := range https {
		hm, _ := h.(map[string]any)
		p := fmt.Sprintf("spec.http[%d]", i)
		report(p, hm, knownHTTP)
		ms, _ := hm["match"].([]any)
		for j, m := range ms {
			mm, _ := m.(map[string]any)
			report(fmt.Sprintf("%s.match[%d]", p, j), mm, knownMatch)
		}
		if rt, ok := hm["retries"].(map[string]any); ok {
			report(p+".retries", rt, knownRetry)
		}
		if rw, ok := hm["rewrite"].(map[string]any); ok {
			report(p+".rewrite", rw, knownRewrite)
		}
		if rd, ok := hm["redirect"].(map[string]any); ok {
			report(p+".redirect", rd, knownRedirect)
		}
		if dr, ok := hm["directResponse"].(map[string]any); ok {
			report(p+".directResponse", dr, knownDirect)
		}
		rs, _ := hm["route"].([]any)
		for j, r := range rs {
			rm, _ := r.(map[string]any)
			report(fmt.Sprintf("%s.route[%d]", p, j), rm, knownRoute)
		}
	}
	return out
}

// Options say how objects become rules.
type Options struct {
	// Gateway selects the objects bound to it, "namespace/name" (the
	// seed's default/common-istio-gateway).
	Gateway string
	// ProxyNamespace is the namespace the gateway runs in: an object must
	// be exported to it (spec.exportTo) to be used, as Istio requires for
	// the ingress gateway's proxies.
	ProxyNamespace string
	// Services, when set, are the services discovery follows: a
	// destination naming another cannot be served and rejects its object.
	Services []string
}

// Result is the merged rules and what was reported.
type Result struct {
	// Hosts are the virtual hosts, one per host name of the bound objects,
	// each with the routes of every object naming it (route.NewHostTable).
	Hosts []route.VirtualHost
	// Rules are the routes of every virtual host, in host order, for views.
	Rules    []route.Rule
	Issues   []Issue
	Rejected map[string]string // object -> reason
	// Unbound are the objects not bound to the gateway, and why.
	Unbound map[string]string
	Applied []string // objects whose rules are in Rules, in merge order
}

// Build merges the objects bound to the gateway into ordered rules.
func Build(objs []*Object, opt Options) *Result {
	res := &Result{Rejected: map[string]string{}, Unbound: map[string]string{}}
	var bound []*Object
	for _, o := range objs {
		ok, names := o.boundTo(opt.Gateway)
		if ok && !o.exportedTo(opt.ProxyNamespace) {
			res.Unbound[o.Name()] = fmt.Sprintf("spec.exportTo %v does not include the gateway's namespace %q", o.Spec.ExportTo, opt.ProxyNamespace)
			continue
		}
		if ok {
			bound = append(bound, o)
			continue
		}
		if len(names) == 0 {
			res.Unbound[o.Name()] = "spec.gateways is empty: the object applies to the sidecars (mesh), not to " + opt.Gateway
		} else {
			res.Unbound[o.Name()] = fmt.Sprintf("spec.gateways %v resolve to %v, not %s", o.Spec.Gateways, names, opt.Gateway)
		}
	}
	// Istio merges a gateway's VirtualServices oldest first, ties by name,
	// then namespace.
	sort.SliceStable(bound, func(i, j int) bool {
		a, b := bound[i].Metadata, bound[j].Metadata
		if !a.CreationTimestamp.Equal(b.CreationTimestamp) {
			return a.CreationTimestamp.Before(b.CreationTimestamp)
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Namespace < b.Namespace
	})
	hosts := map[string]int{} // domain -> index in res.Hosts
	for _, o := range bound {
		issues := o.unimplemented()
		res.Issues = append(res.Issues, issues...)
		var reject []string
		for _, is := range issues {
			if is.Rejects {
				reject = append(reject, is.Field)
			}
		}
		if len(reject) > 0 {
			res.Rejected[o.Name()] = "unimplemented fields that change routing: " + strings.Join(reject, ", ")
			continue
		}
		if err := o.validate(); err != nil {
			res.Rejected[o.Name()] = "refused as Istio's validation refuses it: " + strings.ReplaceAll(err.Error(), "\n", "; ")
			continue
		}
		objRules, notes, err := o.rules(opt)
		if err != nil {
			res.Rejected[o.Name()] = err.Error()
			continue
		}
		routes, dropped := splitRoutes(objRules)
		if dropped >= 0 {
			res.Issues = append(res.Issues, Issue{Object: o.Name(), Field: fmt.Sprintf("spec.http[%d:]", dropped),
				Note: "after a catch-all route: never reached, dropped as Istio drops them (route.go BuildHTTPRoutesForVirtualService)"})
		}
		res.Issues = append(res.Issues, notes...)
		res.Applied = append(res.Applied, o.Name())
		for _, h := range o.hostNames() {
			i, ok := hosts[h]
			if !ok {
				i = len(res.Hosts)
				hosts[h] = i
				res.Hosts = append(res.Hosts, route.VirtualHost{Domain: h})
			}
			res.Hosts[i].Rules = append(res.Hosts[i].Rules, routes...)
		}
	}
	// Within a virtual host, the catch-all routes of every object go last,
	// in their order (route.go SortVHostRoutes): an early object's
	// catch-all would shadow every later object's routes.
	for i := range res.Hosts {
		h := &res.Hosts[i]
		var rest, catchAll []route.Rule
		for _, r := range h.Rules {
			if isCatchAll(&r) {
				catchAll = append(catchAll, r)
			} else {
				rest = append(rest, r)
			}
		}
		h.Rules = append(rest, catchAll...)
		res.Rules = append(res.Rules, h.Rules...)
	}
	return res
}

// splitRoutes makes one route of each match block, as Istio makes one
// Envoy route of each (route.go BuildHTTPRoutesForVirtualService), and
// stops after the first catch-all route: rules after it can never match.
// It returns the index of the first HTTP rule dropped, or -1.
func splitRoutes(rules []route.Rule) ([]route.Rule, int) {
	var out []route.Rule
	for i, r := range rules {
		if len(r.Matches) <= 1 {
			out = append(out, r)
			if isCatchAll(&r) {
				return out, next(i, len(rules))
			}
			continue
		}
		for j, m := range r.Matches {
			one := r
			one.Source = fmt.Sprintf("%s match[%d]", r.Source, j)
			one.Matches = []route.Match{m}
			out = append(out, one)
			if isCatchAll(&one) {
				return out, next(i, len(rules))
			}
		}
	}
	return out, -1
}

// next is the index after i, or -1 past the end.
func next(i, n int) int {
	if i+1 < n {
		return i + 1
	}
	return -1
}

// hostNames are the object's hosts as Istio resolves them
// (pilot/pkg/model/config.go ResolveShortnameToFQDN): a name without a dot
// is a service of the object's namespace, <name>.<namespace>.svc.cluster.local;
// "*" and names with dots stay as they are. Lower case, each once.
func (o *Object) hostNames() []string {
	var out []string
	for _, h := range o.Spec.Hosts {
		h = strings.ToLower(h)
		if h != "*" && !strings.Contains(h, ".") {
			h += "." + o.Metadata.Namespace + ".svc.cluster.local"
		}
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// boundTo reports whether one of the object's spec.gateways names gw
// ("namespace/name"), and the names they resolve to.
func (o *Object) boundTo(gw string) (bool, []string) {
	var names []string
	for _, g := range o.Spec.Gateways {
		if g == "mesh" {
			names = append(names, g) // the sidecars, never a gateway
			continue
		}
		n := ResolveGatewayName(g, o.Metadata.Namespace)
		if n == gw {
			return true, nil
		}
		names = append(names, n)
	}
	return false, names
}

// exportedTo reports whether the object is visible in namespace ns, as
// Istio decides it (pilot/pkg/model/push_context.go, the virtual service
// index by exportTo): no exportTo is the mesh default "*", "." is the
// object's own namespace, "~" is none; "" (no namespace known) sees all.
func (o *Object) exportedTo(ns string) bool {
	if len(o.Spec.ExportTo) == 0 || ns == "" {
		return true
	}
	for _, e := range o.Spec.ExportTo {
		switch e {
		case "*", ns:
			return true
		case ".":
			if o.Metadata.Namespace == ns {
				return true
			}
		}
	}
	return false
}

// ResolveGatewayName turns a spec.gateways entry into "namespace/name" as
// Istio does (pilot/pkg/model/config.go resolveGatewayName): a
// short name is in the VirtualService's namespace, "./name" too,
// "ns/name" as written, and the legacy "name.ns.svc.cluster.local" (or
// "name.ns") names name in ns.
func ResolveGatewayName(g, namespace string) string {
	ns, name, ok := strings.Cut(g, "/")
	switch {
	case ok && ns == ".":
		return namespace + "/" + name
	case ok:
		return g
	}
	name, rest, ok := strings.Cut(g, ".")
	if !ok {
		return namespace + "/" + g
	}
	ns, _, _ = strings.Cut(rest, ".")
	return ns + "/" + name
}

// isCatchAll is Istio's IsCatchAllRoute (route.go) for a route of one
// match block: no header condition (an authority or method match is a
// header to Envoy, :authority or :method) and a uri that is absent, prefix
// "/" or regex ".*".
func isCatchAll(r *route.Rule) bool {
	if len(r.Matches) == 0 {
		return true
	}
	if len(r.Matches) > 1 {
		return false
	}
	m := &r.Matches[0]
	return len(m.Headers) == 0 && len(m.WithoutHeaders) == 0 && m.Authority == nil && m.Method == nil &&
		(m.URI == nil || (m.URI.Kind == route.Prefix && m.URI.Value == "/") || (m.URI.Kind == route.Regex && m.URI.Value == ".*"))
}

func (o *Object) rules(opt Options) (out []route.Rule, notes []Issue, err error) {
	for i, h := range o.Spec.HTTP {
		src := fmt.Sprintf("%s http[%d]", o.Name(), i)
		if h.Name != "" {
			src += " (" + h.Name + ")"
		}
		r := route.Rule{Source: src} // hosts: the virtual hosts the rule goes into
		for j, m := range h.Match {
			rm, err := matchOf(m)
			if err != nil {
				return nil, nil, fmt.Errorf("%s match[%d]: %w", src, j, err)
			}
			// validation.go validateStringMatch: a prefix match must not be
			// empty.
			for _, f := range []struct {
				name string
				m    *StringMatch
			}{{"uri", m.URI}, {"authority", m.Authority}} {
				if f.m != nil && f.m.Prefix != nil && *f.m.Prefix == "" {
					return nil, nil, fmt.Errorf("%s match[%d].%s: prefix string match should not be empty", src, j, f.name)
				}
			}
			r.Matches = append(r.Matches, rm)
		}
		if err := h.checkConflicts(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", src, err)
		}
		local, err := h.localAction()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", src, err)
		}
		r.Action.Rewrite, r.Action.Redirect, r.Action.DirectResponse = local.Rewrite, local.Redirect, local.DirectResponse
		for j, d := range h.Route {
			dest := destinationOf(d, o.Metadata.Namespace)
			if dest.NoService != "" {
				notes = append(notes, Issue{Object: o.Name(), Field: fmt.Sprintf("spec.http[%d].route[%d].destination.host", i, j),
					Note: fmt.Sprintf("%q names no service: Istio expands only short names (write %s.svc.cluster.local); calls routed there get UNAVAILABLE, as Envoy answers 503 (no cluster)", d.Destination.Host, d.Destination.Host)})
			} else if len(opt.Services) > 0 && !slices.Contains(opt.Services, dest.Service) {
				return nil, nil, fmt.Errorf("%s route[%d]: destination %s: envgate discovers only the services %q of each namespace (routing.service, discovery.kubernetes.services)", src, j, d.Destination.Host, opt.Services)
			}
			w := int32(100)
			if d.Weight != nil {
				w = *d.Weight
			} else if len(h.Route) > 1 {
				w = 0
			}
			if w < 0 {
				return nil, nil, fmt.Errorf("%s route[%d]: negative weight", src, j)
			}
			r.Action.Destinations = append(r.Action.Destinations, route.WeightedDestination{Destination: dest, Weight: w})
		}
		if len(h.Route) == 1 && r.Action.Destinations[0].Weight == 0 && h.Route[0].Weight == nil {
			r.Action.Destinations[0].Weight = 100
		}
		if total := totalWeight(r.Action.Destinations); len(h.Route) > 1 && total == 0 {
			// validation.go validateHTTPRouteDestinations.
			return nil, nil, fmt.Errorf("%s route: total destination weight = 0", src)
		}
		if h.Timeout != "" {
			d, err := time.ParseDuration(h.Timeout)
			if err != nil {
				return nil, nil, fmt.Errorf("%s timeout: %w", src, err)
			}
			r.Action.Timeout = d
		}
		r.Action.Retries = route.DefaultRetries
		if h.Retries != nil {
			// validation.go validateHTTPRetry.
			if h.Retries.Attempts < 0 {
				return nil, nil, fmt.Errorf("%s retries.attempts: attempts cannot be negative", src)
			}
			r.Action.Retries = route.Retries{Attempts: h.Retries.Attempts}
			if h.Retries.PerTryTimeout != "" {
				d, err := time.ParseDuration(h.Retries.PerTryTimeout)
				if err != nil {
					return nil, nil, fmt.Errorf("%s retries.perTryTimeout: %w", src, err)
				}
				// ValidateDuration.
				if d < time.Millisecond {
					return nil, nil, fmt.Errorf("%s retries.perTryTimeout: duration must be greater than 1ms", src)
				}
				if d%time.Millisecond != 0 {
					return nil, nil, fmt.Errorf("%s retries.perTryTimeout: only durations to ms precision are supported", src)
				}
				r.Action.Retries.PerTryTimeout = d
			}
			for _, on := range strings.Split(h.Retries.RetryOn, ",") {
				if on = strings.TrimSpace(on); on != "" {
					if !validRetryOn(on) {
						return nil, nil, fmt.Errorf("%s retries.retryOn: %q is not a retry policy Istio accepts (validation.go supportedRetryOnPolicies, or an HTTP status code)", src, on)
					}
					r.Action.Retries.RetryOn = append(r.Action.Retries.RetryOn, on)
				}
			}
			if h.Retries.RetryOn == "" {
				r.Action.Retries.RetryOn = route.DefaultRetries.RetryOn
			}
		}
		if h.Headers != nil {
			if h.Headers.Request != nil {
				r.Action.RequestHeaders = opsOf(h.Headers.Request)
			}
			if h.Headers.Response != nil {
				r.Action.ResponseHeaders = opsOf(h.Headers.Response)
			}
		}
		out = append(out, r)
	}
	return out, notes, nil
}

// supportedRetryOn are the retry policies Istio's validation accepts
// (pkg/config/validation/validation.go supportedRetryOnPolicies): Envoy's
// x-envoy-retry-on and x-envoy-retry-grpc-on values.
var supportedRetryOn = []string{"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx",
	"refused-stream", "retriable-status-codes", "retriable-headers", "envoy-ratelimited", "http3-post-connect-failure",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}

// validRetryOn is a supported policy or an HTTP status code (a retriable
// status code, as Istio accepts it).
func validRetryOn(on string) bool {
	if slices.Contains(supportedRetryOn, on) {
		return true
	}
	n, err := strconv.Atoi(on)
	return err == nil && n >= 100 && n <= 599
}

func totalWeight(ds []route.WeightedDestination) int64 {
	var t int64
	for _, d := range ds {
		t += int64(d.Weight)
	}
	return t
}

func opsOf(h *HeaderOps) route.HeaderOps {
	ops := route.HeaderOps{Set: map[string]string{}, Add: map[string]string{}}
	for k, v := range h.Set {
		ops.Set[strings.ToLower(k)] = v
	}
	for k, v := range h.Add {
		ops.Add[strings.ToLower(k)] = v
	}
	for _, k := range h.Remove {
		ops.Remove = append(ops.Remove, strings.ToLower(k))
	}
	return ops
}

func matchOf(m MatchRequest) (route.Match, error) {
	var out route.Match
	out.Name = m.Name
	for _, name := range sortedKeys(m.Headers) {
		sm, err := stringMatch(m.Headers[name])
		if err != nil {
			return out, fmt.Errorf("headers.%s: %w", name, err)
		}
		out.Headers = append(out.Headers, route.HeaderMatch{Name: strings.ToLower(name), Match: sm})
	}
	for _, name := range sortedKeys(m.WithoutHeaders) {
		sm, err := stringMatch(m.WithoutHeaders[name])
		if err != nil {
			return out, fmt.Errorf("withoutHeaders.%s: %w", name, err)
		}
		out.WithoutHeaders = append(out.WithoutHeaders, route.HeaderMatch{Name: strings.ToLower(name), Match: sm})
	}
	if m.URI != nil {
		sm, err := stringMatch(*m.URI)
		if err != nil {
			return out, fmt.Errorf("uri: %w", err)
		}
		out.URI = &sm
	}
	if m.Authority != nil {
		sm, err := stringMatch(*m.Authority)
		if err != nil {
			return out, fmt.Errorf("authority: %w", err)
		}
		out.Authority = &sm
	}
	if m.Method != nil {
		// Istio matches the method as Envoy's :method header.
		sm, err := stringMatch(*m.Method)
		if err != nil {
			return out, fmt.Errorf("method: %w", err)
		}
		out.Method = &sm
	}
	return out, nil
}

func stringMatch(s StringMatch) (route.StringMatch, error) {
	n := 0
	for _, p := range []*string{s.Exact, s.Prefix, s.Regex} {
		if p != nil {
			n++
		}
	}
	if n > 1 {
		return route.StringMatch{}, errors.New("more than one of exact, prefix and regex")
	}
	switch {
	case s.Exact != nil:
		return route.StringMatch{Kind: route.Exact, Value: *s.Exact}, nil
	case s.Prefix != nil:
		return route.StringMatch{Kind: route.Prefix, Value: *s.Prefix}, nil
	case s.Regex != nil:
		return route.NewRegex(*s.Regex)
	}
	return route.StringMatch{Kind: route.Present}, nil
}

// destinationOf resolves a destination host as Istio does
// (pilot/pkg/model/config.go ResolveShortnameToFQDN, then the service
// registry by host name): a name without dots is a service of the
// VirtualService's namespace, <name>.<namespace>.svc.cluster.local that
// service; any other host, "name.namespace" included, is looked up as
// written and names no Kubernetes service, so calls routed there fail as
// Envoy's do (no cluster). The port is the Service's port number; without
// one it stays "" and discovery picks it as Istio does.
func destinationOf(d RouteDest, ns string) route.Destination {
	host := strings.TrimSuffix(d.Destination.Host, ".")
	var dest route.Destination
	if name, rest, ok := strings.Cut(host, "."); !ok {
		dest = route.Destination{Service: host, Namespace: ns}
	} else if namespace, suffix, ok := strings.Cut(rest, "."); ok && suffix == "svc.cluster.local" && name != "" && namespace != "" {
		dest = route.Destination{Service: name, Namespace: namespace}
	} else {
		return route.Destination{NoService: d.Destination.Host}
	}
	if d.Destination.Port != nil && d.Destination.Port.Number != 0 {
		dest.Port = strconv.Itoa(int(d.Destination.Port.Number))
	}
	dest.Subset = d.Destination.Subset
	return dest
}

func sortedKeys(m map[string]StringMatch) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
