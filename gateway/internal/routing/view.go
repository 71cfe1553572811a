package routing

import "github.com/envgate/envgate/gateway/internal/route"

// View is the routing table for /routes: every rule under the virtual host
// it is in (a rule of an object with several hosts is in each, as in
// Envoy), each destination with its endpoints, and the objects left out.
type View struct {
	Rules    []RuleView        `json:"rules"`
	NoMatch  string            `json:"noMatch"`
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

// DestinationView is one destination of a rule.
type DestinationView struct {
	Destination string   `json:"destination"`
	Weight      int32    `json:"weight"`
	Endpoints   []string `json:"endpoints"`
	Discovered  bool     `json:"discovered"`
}

// View builds the view; endpoints looks up a destination's endpoints by
// its discovery key.
func (s *State) View(endpoints func(key string) ([]string, bool)) View {
	snap := s.snap.Load()
	v := View{Rules: []RuleView{}, NoMatch: "UNIMPLEMENTED"}
	if snap.vs != nil {
		v.Rejected, v.Unbound = snap.vs.Rejected, snap.vs.Unbound
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
				eps, ok := endpoints(d.Key())
				if eps == nil {
					eps = []string{}
				}
				rv.Destinations = append(rv.Destinations, DestinationView{Destination: d.String(), Weight: d.Weight, Endpoints: eps, Discovered: ok})
			}
			v.Rules = append(v.Rules, rv)
		}
	}
	return v
}
