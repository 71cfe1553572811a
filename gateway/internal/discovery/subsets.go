package discovery

import (
	"maps"
	"slices"
	"strings"
)

// Labeled is an endpoint and the labels of the pod behind it.
type Labeled struct {
	Addr   string
	Labels map[string]string
}

// SetLabeled replaces the endpoints of key with eps, whose pods' labels
// select them into the key's subsets, and updates the subsets.
func (s *Store) SetLabeled(key string, eps []Labeled) {
	addrs := make([]string, 0, len(eps))
	labels := make(map[string]map[string]string, len(eps))
	for _, e := range eps {
		addrs = append(addrs, e.Addr)
		labels[e.Addr] = e.Labels
	}
	s.mu.Lock()
	s.deliverLocked(s.setLocked(key, normalize(addrs), labels))
}

// Subset returns the key of the subset of set whose endpoints' pods carry
// every label of selector (a DestinationRule subset), and keeps it up to
// date from then on. The subset exists when set does; it is empty when no
// pod matches, or when set's source knows no labels (see Labeled).
func (s *Store) Subset(set string, selector map[string]string) string {
	key := set + "|" + selectorString(selector)
	s.mu.Lock()
	if _, ok := s.subsets[set][key]; ok {
		s.mu.Unlock()
		return key
	}
	if s.subsets[set] == nil {
		s.subsets[set] = map[string]map[string]string{}
	}
	s.subsets[set][key] = maps.Clone(selector)
	var changes []change
	if _, ok := s.sets[set]; ok {
		eps := s.selectLocked(set, selector)
		s.sets[key] = eps
		changes = append(changes, change{key, eps, true})
	}
	s.deliverLocked(changes)
	return key
}

// Labeled reports whether set's source knows its endpoints' labels.
func (s *Store) Labeled(set string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.labels[set]
	return ok
}

// selectLocked is set's endpoints whose labels carry every label of sel.
func (s *Store) selectLocked(set string, sel map[string]string) Endpoints {
	out := Endpoints{}
	for _, addr := range s.sets[set] {
		if matches(s.labels[set][addr], sel) {
			out = append(out, addr)
		}
	}
	return out
}

func matches(labels, sel map[string]string) bool {
	for k, v := range sel {
		if have, ok := labels[k]; !ok || have != v {
			return false
		}
	}
	return true
}

// selectorString is a selector's canonical form, "k1=v1,k2=v2".
func selectorString(sel map[string]string) string {
	keys := slices.Sorted(maps.Keys(sel))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+sel[k])
	}
	return strings.Join(parts, ",")
}
