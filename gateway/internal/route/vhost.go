package route

import (
	"sort"
	"strings"
)

// VirtualHost is Envoy's virtual host as Istio builds one for each host name
// of a gateway server: the routes of every VirtualService bound to the
// gateway that names the host, merged (pilot/pkg/networking/core/gateway.go,
// buildGatewayHTTPRouteConfig). A request is routed by the rules of exactly
// one virtual host, the one its :authority selects.
type VirtualHost struct {
	// Domain is a host name ("app.example.com"), a suffix wildcard
	// ("*.example.com"), a prefix wildcard ("app.*") or "*"; lower case.
	Domain string
	Rules  []Rule
}

// hostIndex finds a request's virtual host as Envoy's
// RouteMatcher::findVirtualHost does (source/common/router/config_impl.cc):
// the authority lower-cased and without its port; an exact domain first,
// then the longest suffix wildcard, then the longest prefix wildcard (a
// wildcard stands for at least one character), then "*".
type hostIndex struct {
	exact    map[string]int
	suffixes []wildcard // longest first
	prefixes []wildcard // longest first
	any      int        // -1: none
}

type wildcard struct {
	part string // the domain without its "*"
	host int
}

func newHostIndex(hosts []VirtualHost) hostIndex {
	ix := hostIndex{exact: map[string]int{}, any: -1}
	for i, h := range hosts {
		d := asciiLower(h.Domain)
		switch {
		case d == "*":
			ix.any = i
		case strings.HasPrefix(d, "*"):
			ix.suffixes = append(ix.suffixes, wildcard{d[1:], i})
		case strings.HasSuffix(d, "*"):
			ix.prefixes = append(ix.prefixes, wildcard{d[:len(d)-1], i})
		default:
			ix.exact[d] = i
		}
	}
	longestFirst := func(w []wildcard) {
		sort.SliceStable(w, func(i, j int) bool { return len(w[i].part) > len(w[j].part) })
	}
	longestFirst(ix.suffixes)
	longestFirst(ix.prefixes)
	return ix
}

// find returns the index of authority's virtual host, or -1. It allocates
// only for an authority with upper-case letters.
func (ix *hostIndex) find(authority string) int {
	host := asciiLower(stripPort(authority))
	if i, ok := ix.exact[host]; ok {
		return i
	}
	for _, w := range ix.suffixes {
		if len(host) > len(w.part) && strings.HasSuffix(host, w.part) {
			return w.host
		}
	}
	for _, w := range ix.prefixes {
		if len(host) > len(w.part) && strings.HasPrefix(host, w.part) {
			return w.host
		}
	}
	return ix.any
}

// asciiLower lower-cases ASCII letters only, as Envoy does host names
// (absl::AsciiStrToLower); it allocates only when there is one to change.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; 'A' <= c && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// stripPort removes a ":port" from a host (an IPv6 literal keeps its
// brackets).
func stripPort(authority string) string {
	if i := strings.LastIndexByte(authority, ':'); i >= 0 && !strings.Contains(authority[i:], "]") {
		return authority[:i]
	}
	return authority
}

// NewHostTable builds a table of virtual hosts: a request is matched
// against the rules of the one virtual host its authority selects, in
// order, and never against another host's.
func NewHostTable(hosts []VirtualHost) *Table {
	t := &Table{hosts: hosts, index: newHostIndex(hosts)}
	for _, h := range hosts {
		t.rules = append(t.rules, h.Rules...)
	}
	return t
}

// VirtualHosts are the table's virtual hosts, nil for a table of plain
// rules. The slice is shared: do not modify it.
func (t *Table) VirtualHosts() []VirtualHost { return t.hosts }

// VirtualHostFor returns the virtual host a request's authority selects.
func (t *Table) VirtualHostFor(authority string) (*VirtualHost, bool) {
	if t.hosts == nil {
		return nil, false
	}
	i := t.index.find(authority)
	if i < 0 {
		return nil, false
	}
	return &t.hosts[i], true
}
