package route

import (
	"fmt"
	"regexp"
	"strings"
)

// MatchKind is how a StringMatch compares.
type MatchKind int

// The kinds of Istio's StringMatch, plus presence.
const (
	Exact MatchKind = iota
	Prefix
	Regex
	// Present matches any value, the empty one included, of a header that is
	// there (Istio: a header match with no value, or `present: true`).
	Present
)

func (k MatchKind) String() string {
	return [...]string{"exact", "prefix", "regex", "present"}[k]
}

// StringMatch is one condition on a string: a header's value, the path or
// the authority.
type StringMatch struct {
	Kind  MatchKind
	Value string
	re    *regexp.Regexp
}

// NewRegex compiles an RE2 expression that must match the whole value, as
// Envoy's safe_regex does.
func NewRegex(expr string) (StringMatch, error) {
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return StringMatch{}, fmt.Errorf("regex %q: %w", expr, err)
	}
	return StringMatch{Kind: Regex, Value: expr, re: re}, nil
}

// MatchString reports whether s matches.
func (m StringMatch) MatchString(s string) bool {
	switch m.Kind {
	case Exact:
		return s == m.Value
	case Prefix:
		return strings.HasPrefix(s, m.Value)
	case Regex:
		return m.re.MatchString(s)
	default:
		return true
	}
}

// MatchValues matches a header's values as Envoy sees them: joined with ",".
// No values means the header is absent, which nothing but an absence check
// matches. Exact and prefix matches do not build the joined string.
func (m StringMatch) MatchValues(values []string) bool {
	if len(values) == 0 {
		return false
	}
	if len(values) == 1 {
		return m.MatchString(values[0])
	}
	switch m.Kind {
	case Exact:
		return joinedEquals(values, m.Value)
	case Prefix:
		return joinedHasPrefix(values, m.Value)
	case Regex:
		return m.re.MatchString(strings.Join(values, ","))
	default:
		return true
	}
}

// MatchValuesMissingAsEmpty is MatchValues with an absent header taken as
// the empty string, except for a presence match: Envoy's
// treat_missing_header_as_empty, which Istio (1.22 and later) sets on the
// inverted matchers of withoutHeaders (pilot/pkg/networking/core/route/
// route.go, translateHeaderMatch).
func (m StringMatch) MatchValuesMissingAsEmpty(values []string) bool {
	if len(values) == 0 && m.Kind != Present {
		return m.MatchString("")
	}
	return m.MatchValues(values)
}

func (m StringMatch) String() string {
	if m.Kind == Present {
		return "present"
	}
	return fmt.Sprintf("%s %q", m.Kind, m.Value)
}

// joinedHasPrefix reports whether strings.Join(values, ",") starts with p.
func joinedHasPrefix(values []string, p string) bool {
	for i, v := range values {
		if i > 0 {
			if p == "" {
				return true
			}
			if p[0] != ',' {
				return false
			}
			p = p[1:]
		}
		if len(p) <= len(v) {
			return strings.HasPrefix(v, p)
		}
		if !strings.HasPrefix(p, v) {
			return false
		}
		p = p[len(v):]
	}
	return p == ""
}

// String describes the block's conditions, ANDed.
func (m *Match) String() string {
	var conds []string
	for _, h := range m.Headers {
		conds = append(conds, "header "+h.Name+" "+h.Match.String())
	}
	for _, h := range m.WithoutHeaders {
		conds = append(conds, "without header "+h.Name+" "+h.Match.String())
	}
	if m.URI != nil {
		conds = append(conds, "uri "+m.URI.String())
	}
	if m.Authority != nil {
		conds = append(conds, "authority "+m.Authority.String())
	}
	if len(conds) == 0 {
		return "any request"
	}
	return strings.Join(conds, " AND ")
}
