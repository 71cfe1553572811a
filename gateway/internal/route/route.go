// Package route holds the routing table: from the attributes of one request
// to a destination or a refusal. It is pure (no I/O) and allocation-free on
// the path that picks a route, because it runs once per call.
//
// The table reproduces what the seed's Istio VirtualServices do: one rule per
// environment, `headers: {env: {exact: envN}}`, routed to
// app-service.envN.svc.cluster.local. As in Envoy, header names are matched
// case-insensitively (gRPC metadata keys are lower case on the wire), values
// case-sensitively, and several values of one header are joined with ","
// before matching.
package route

import (
	"fmt"
	"slices"
	"strings"
)

// Destination names the service a call is sent to: a Kubernetes Service in a
// namespace, reached on a port. It is comparable and used as a map key.
type Destination struct {
	Namespace string
	Service   string
	// Port is the port's name ("grpc") or number, as discovery resolves it.
	Port string
}

// String is the destination's cluster-local host name and port.
func (d Destination) String() string {
	return d.Service + "." + d.Namespace + ".svc.cluster.local:" + d.Port
}

// Key is how discovery names the destination's endpoint set.
func (d Destination) Key() string { return d.Service + "." + d.Namespace + ":" + d.Port }

// Table maps the values of one header to destinations. It is immutable once
// built, so readers need no lock; a new configuration builds a new Table.
type Table struct {
	header string
	routes map[string]Destination
}

// Rule routes requests whose header equals Value exactly to Destination.
type Rule struct {
	Value       string
	Destination Destination
}

// NewTable builds a table for header (matched case-insensitively). Values must
// be unique and non-empty.
func NewTable(header string, rules []Rule) (*Table, error) {
	header = strings.ToLower(strings.TrimSpace(header))
	if header == "" {
		return nil, fmt.Errorf("route: header name is empty")
	}
	t := &Table{header: header, routes: make(map[string]Destination, len(rules))}
	for _, r := range rules {
		if r.Value == "" {
			return nil, fmt.Errorf("route: rule for %v has an empty header value", r.Destination)
		}
		if _, dup := t.routes[r.Value]; dup {
			return nil, fmt.Errorf("route: two rules for %s=%q", header, r.Value)
		}
		t.routes[r.Value] = r.Destination
	}
	return t, nil
}

// Header is the lower-case name of the header the table routes on.
func (t *Table) Header() string { return t.header }

// Len is the number of rules.
func (t *Table) Len() int { return len(t.routes) }

// Rules returns the rules sorted by value, for display.
func (t *Table) Rules() []Rule {
	rules := make([]Rule, 0, len(t.routes))
	for v, d := range t.routes {
		rules = append(rules, Rule{Value: v, Destination: d})
	}
	slices.SortFunc(rules, func(a, b Rule) int { return strings.Compare(a.Value, b.Value) })
	return rules
}

// Route picks the destination for the values a request carries for the
// table's header. It does not allocate.
//
// Several values are joined with "," before matching, as Envoy does, so two
// `env` headers never select an environment unless a rule's value is that
// exact joined string.
func (t *Table) Route(values []string) (Destination, bool) {
	switch len(values) {
	case 0:
		return Destination{}, false
	case 1:
		d, ok := t.routes[values[0]]
		return d, ok
	}
	for v, d := range t.routes {
		if joinedEquals(values, v) {
			return d, true
		}
	}
	return Destination{}, false
}

// joinedEquals reports whether strings.Join(values, ",") == s without
// building the joined string.
func joinedEquals(values []string, s string) bool {
	for i, v := range values {
		if i > 0 {
			if s == "" || s[0] != ',' {
				return false
			}
			s = s[1:]
		}
		if !strings.HasPrefix(s, v) {
			return false
		}
		s = s[len(v):]
	}
	return s == ""
}

// NoRouteError says why a request matched no rule. It is built only on the
// refusal path.
type NoRouteError struct {
	Header string
	Values []string
}

func (e *NoRouteError) Error() string {
	switch {
	case len(e.Values) == 0:
		return fmt.Sprintf("no route: the request has no %q header", e.Header)
	case len(e.Values) == 1 && e.Values[0] == "":
		return fmt.Sprintf("no route: the %q header is empty", e.Header)
	default:
		return fmt.Sprintf("no route for %s=%q", e.Header, strings.Join(e.Values, ","))
	}
}
