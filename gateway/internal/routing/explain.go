package routing

import (
	"fmt"
	"strings"

	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/virtualservice"
)

// Explanation is what `gateway explain` and /explain say of one request.
type Explanation struct {
	Method    string              `json:"method"`
	Authority string              `json:"authority"`
	Headers   map[string][]string `json:"headers"`
	// VirtualHost is the domain of the virtual host the authority selects,
	// in VirtualService mode.
	VirtualHost string `json:"virtualHost,omitempty"`
	Steps       []Step `json:"steps"`
	Decision    string `json:"decision"`
	// Dials says, per destination of the decision, what a call dials (the
	// live /explain only: `gateway explain` has no discovery).
	Dials    []string          `json:"dials,omitempty"`
	Issues   []string          `json:"issues,omitempty"`
	Rejected map[string]string `json:"rejected,omitempty"`
	Unbound  map[string]string `json:"unbound,omitempty"`
}

// Step is one rule's verdict.
type Step struct {
	Rule    string `json:"rule"`
	Matched bool   `json:"matched"`
	Why     string `json:"why"`
}

// Explain explains a request under the current state; dial, when not nil,
// says what a call to each destination of the decision dials.
func (s *State) Explain(method, authority string, headers map[string][]string, dial func(route.Destination) Dial) Explanation {
	snap := s.snap.Load()
	e := Explain(snap.table, snap.vs, method, authority, headers)
	if rule, ok := snap.table.Route(&route.Request{Headers: headers, Path: method, Authority: authority}); ok && dial != nil {
		for _, d := range rule.Action.Destinations {
			e.Dials = append(e.Dials, d.Destination.String()+": "+dial(d.Destination).String())
		}
	}
	return e
}

// Explain says how table routes a request, why each earlier rule did not
// match, and what the merge vs (nil: none) reported.
func Explain(t *route.Table, vs *virtualservice.Result, method, authority string, headers map[string][]string) Explanation {
	e := Explanation{Method: method, Authority: authority, Headers: headers}
	req := &route.Request{Headers: headers, Path: method, Authority: authority}
	if vhs := t.VirtualHosts(); vhs != nil {
		if vh, ok := t.VirtualHostFor(authority); ok {
			e.VirtualHost = vh.Domain
		} else {
			var domains []string
			for _, vh := range vhs {
				domains = append(domains, vh.Domain)
			}
			e.VirtualHost = fmt.Sprintf("none: authority %q is none of %v (Envoy answers 404, gRPC UNIMPLEMENTED)", authority, domains)
		}
	}
	for _, s := range t.Explain(req) {
		e.Steps = append(e.Steps, Step{Rule: s.Rule.Source, Matched: s.Matched, Why: s.Why})
	}
	if rule, ok := t.Route(req); ok {
		var ds []string
		var total int32
		for _, d := range rule.Action.Destinations {
			total += d.Weight
		}
		for _, d := range rule.Action.Destinations {
			ds = append(ds, fmt.Sprintf("%s (%d of %d)", d.Destination, d.Weight, total))
		}
		e.Decision = "route to " + strings.Join(ds, ", ")
		if rule.Action.Timeout > 0 {
			e.Decision += fmt.Sprintf(", timeout %v", rule.Action.Timeout)
		}
	} else if IsHealthMethod(method) && AnswersLocally(t, vs != nil, method, withAuthority(headers, authority)) {
		e.Decision = "answered by the gateway's own grpc.health.v1 service: no route takes this health call"
	} else {
		h := t.EnvHeader()
		e.Decision = "UNIMPLEMENTED: envgate: " + (&route.NoRouteError{Header: h, Values: headers[h], Path: method}).Error()
	}
	if vs != nil {
		for _, is := range vs.Issues {
			e.Issues = append(e.Issues, is.String())
		}
		e.Rejected = vs.Rejected
		e.Unbound = vs.Unbound
	}
	return e
}

// withAuthority is headers with :authority, as a call's metadata has it.
func withAuthority(headers map[string][]string, authority string) map[string][]string {
	md := make(map[string][]string, len(headers)+1)
	for k, v := range headers {
		md[k] = v
	}
	if authority != "" {
		md[":authority"] = []string{authority}
	}
	return md
}

// Health's methods (grpc.health.v1.Health).
var healthMethods = []string{"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List"}

// IsHealthMethod is a method of grpc.health.v1.Health.
func IsHealthMethod(method string) bool {
	for _, m := range healthMethods {
		if m == method {
			return true
		}
	}
	return false
}

// AnswersLocally reports whether a health call with metadata md is the
// gateway's own to answer: in the one-header form, a call without the
// environment header; with VirtualServices, a call no rule matches (a
// catch-all rule takes health calls too, as it does in Istio).
func AnswersLocally(t *route.Table, vsMode bool, method string, md map[string][]string) bool {
	if !vsMode {
		return len(md[t.EnvHeader()]) == 0
	}
	req := route.Request{Headers: md, Path: method}
	if a := md[":authority"]; len(a) > 0 {
		req.Authority = a[0]
	}
	_, routed := t.Route(&req)
	return !routed
}
