package routing

import (
	"strings"

	"github.com/envgate/envgate/gateway/internal/route"
)

// View is the routing table for /routes: every rule under the virtual host
// it is in (a rule of an object with several hosts is in each, as in
// Envoy), each destination with its endpoints, and the objects left out.
type View struct {
	Rules    []RuleView        `json:"rules"`
	NoMatch  string            `json:"noMatch"`
	Rejected map[string]string `json:"rejected,omitempty"`
	Unbound  map[string]string `json:"unbound,omitempty"`
	// DestinationRules are those in force, refused, and not visible.
	DestinationRules *DestinationRulesView `json:"destinationRules,omitempty"`
}

// DestinationRulesView is the DestinationRules' state.
type DestinationRulesView struct {
	Applied  []string          `json:"applied"`
	Rejected map[string]string `json:"rejected,omitempty"`
	Unbound  map[string]string `json:"unbound,omitempty"`
}

// RuleView is one rule.
type RuleView struct {
	Source       string            `json:"source"`
	Hosts        []string          `json:"hosts,omitempty"`
	Match        []string          `json:"match"`
	Destinations []DestinationView `json:"destinations"`
	Timeout      string            `json:"timeout,omitempty"`
}

// DestinationView is one destination of a rule and what a call to it
// dials: the endpoint set of its Service port and the pods' addresses.
type DestinationView struct {
	Destination string   `json:"destination"`
	Weight      int32    `json:"weight"`
	EndpointSet string   `json:"endpointSet,omitempty"`
	Endpoints   []string `json:"endpoints"`
	Discovered  bool     `json:"discovered"`
	TLS         string   `json:"tls,omitempty"`
	// DestinationRule names the objects whose policy applies.
	DestinationRule string `json:"destinationRule,omitempty"`
	// Error says why a call there fails before dialing (a port the
	// Service does not have).
	Error string `json:"error,omitempty"`
}

// Dial is what discovery says a call to a destination dials.
type Dial struct {
	Set        string   // the endpoint set's key
	Endpoints  []string // its addresses
	Discovered bool     // the set exists
	TLS        string   // how its connections are secured
	// DestinationRule names the objects whose policy applies.
	DestinationRule string
	Error           string // why there is no set to dial
}

// String says what is dialed, or why nothing is.
func (d Dial) String() string {
	switch {
	case d.Error != "":
		return d.Error
	case !d.Discovered:
		return "endpoint set " + d.Set + " not discovered"
	case len(d.Endpoints) == 0:
		return "endpoint set " + d.Set + ": no ready endpoint"
	}
	s := "endpoint set " + d.Set + ": " + strings.Join(d.Endpoints, ", ")
	if d.TLS != "" {
		s += "; " + d.TLS
	}
	if d.DestinationRule != "" {
		s += "; DestinationRule " + d.DestinationRule
	}
	return s
}

// View builds the view; dial says what a call to a destination dials.
func (s *State) View(dial func(route.Destination) Dial) View {
	snap := s.snap.Load()
	v := View{Rules: []RuleView{}, NoMatch: "UNIMPLEMENTED"}
	if snap.vs != nil {
		v.Rejected, v.Unbound = snap.vs.Rejected, snap.vs.Unbound
	}
	if dr := s.DestinationRules(); dr != nil {
		v.DestinationRules = &DestinationRulesView{Applied: dr.Applied, Rejected: dr.Rejected, Unbound: dr.Unbound}
		if v.DestinationRules.Applied == nil {
			v.DestinationRules.Applied = []string{}
		}
	}
	type hostRules struct {
		domain string
		rules  []route.Rule
	}
	groups := []hostRules{{rules: snap.table.Rules()}}
	if vhs := snap.table.VirtualHosts(); vhs != nil {
		groups = groups[:0]
		for _, vh := range vhs {
			groups = append(groups, hostRules{vh.Domain, vh.Rules})
		}
	}
	for _, grp := range groups {
		for _, r := range grp.rules {
			rv := RuleView{Source: r.Source, Hosts: r.Hosts, Match: []string{}}
			if grp.domain != "" {
				rv.Hosts = []string{grp.domain}
			}
			for _, m := range r.Matches {
				rv.Match = append(rv.Match, m.String())
			}
			if r.Action.Timeout > 0 {
				rv.Timeout = r.Action.Timeout.String()
			}
			for _, d := range r.Action.Destinations {
				dv := DestinationView{Destination: d.String(), Weight: d.Weight, Endpoints: []string{}}
				if d.NoService == "" {
					t := dial(d.Destination)
					dv.EndpointSet, dv.Discovered, dv.Error, dv.TLS, dv.DestinationRule = t.Set, t.Discovered, t.Error, t.TLS, t.DestinationRule
					if t.Endpoints != nil {
						dv.Endpoints = t.Endpoints
					}
				}
				rv.Destinations = append(rv.Destinations, dv)
			}
			v.Rules = append(v.Rules, rv)
		}
	}
	return v
}
