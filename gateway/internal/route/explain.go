package route

import (
	"fmt"
	"strings"
)

// Step is the verdict of one rule on a request.
type Step struct {
	Rule    *Rule
	Matched bool
	// Why says which condition failed in each match block, or which block
	// matched.
	Why string
}

// Explain walks the rules in order as Route does and says, for every rule up
// to the one that matched, why it did or did not match. It allocates; it is
// for people, not for the call path.
func (t *Table) Explain(r *Request) []Step {
	var steps []Step
	rules := t.rules
	if t.hosts != nil {
		vh, ok := t.VirtualHostFor(r.Authority)
		if !ok {
			return nil
		}
		rules = vh.Rules
	}
	for i := range rules {
		rule := &rules[i]
		if !rule.HostMatches(r.Authority) {
			steps = append(steps, Step{Rule: rule, Why: fmt.Sprintf("authority %q is not one of the hosts %v", r.Authority, rule.Hosts)})
			continue
		}
		if len(rule.Matches) == 0 {
			return append(steps, Step{Rule: rule, Matched: true, Why: "the rule has no match: it takes every request"})
		}
		var why []string
		for j := range rule.Matches {
			m := &rule.Matches[j]
			if reason := m.failure(r); reason != "" {
				why = append(why, fmt.Sprintf("match[%d]: %s", j, reason))
				continue
			}
			return append(steps, Step{Rule: rule, Matched: true, Why: fmt.Sprintf("match[%d] holds", j)})
		}
		steps = append(steps, Step{Rule: rule, Why: strings.Join(why, "; ")})
	}
	return steps
}

// failure names the first condition of the block the request fails, or "".
func (m *Match) failure(r *Request) string {
	for _, h := range m.Headers {
		values := r.Headers[h.Name]
		if !h.Match.MatchValues(values) {
			if len(values) == 0 {
				return fmt.Sprintf("header %s is absent, want %s", h.Name, h.Match)
			}
			return fmt.Sprintf("header %s is %q, want %s", h.Name, strings.Join(values, ","), h.Match)
		}
	}
	for _, h := range m.WithoutHeaders {
		if values := r.Headers[h.Name]; h.Match.MatchValuesMissingAsEmpty(values) {
			if len(values) == 0 {
				return fmt.Sprintf("header %s is absent, taken as \"\", which withoutHeaders excludes (%s)", h.Name, h.Match)
			}
			return fmt.Sprintf("header %s is %q, which withoutHeaders excludes (%s)", h.Name, strings.Join(values, ","), h.Match)
		}
	}
	if m.URI != nil && !m.URI.MatchString(r.Path) {
		return fmt.Sprintf("uri %q, want %s", r.Path, m.URI)
	}
	if m.Authority != nil && !m.Authority.MatchString(r.Authority) {
		return fmt.Sprintf("authority %q, want %s", r.Authority, m.Authority)
	}
	return ""
}
