package route

import (
	"strings"
	"testing"
)

// referenceHost is the virtual-host choice written the plain way, from
// Envoy's rule (config_impl.cc RouteMatcher::findVirtualHost): every
// candidate ranked, the best kept. Exact beats any wildcard, a suffix
// wildcard beats a prefix one, a longer wildcard beats a shorter, "*" is
// last; a wildcard's "*" stands for at least one character.
func referenceHost(domains []string, authority string) int {
	host := asciiLowerRef(authority)
	if i := strings.LastIndex(host, ":"); i >= 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	best, bestRank := -1, -1
	for i, d := range domains {
		d = asciiLowerRef(d)
		rank := -1
		switch {
		case d == "*":
			rank = 0
		case strings.HasPrefix(d, "*"):
			if s := d[1:]; len(host) > len(s) && strings.HasSuffix(host, s) {
				rank = 1<<20 + len(s)
			}
		case strings.HasSuffix(d, "*"):
			if p := d[:len(d)-1]; len(host) > len(p) && strings.HasPrefix(host, p) {
				rank = 1 + len(p)
			}
		case d == host:
			rank = 1 << 30
		}
		// Among equals the first wins, as the index keeps the first of a
		// length.
		if rank > bestRank {
			best, bestRank = i, rank
		}
	}
	return best
}

func asciiLowerRef(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c >= 'A' && c <= 'Z' {
			c += 32
		}
		b.WriteByte(c)
	}
	return b.String()
}

// FuzzVirtualHost checks the virtual-host index against the reference.
func FuzzVirtualHost(f *testing.F) {
	f.Add("api.example.com", "*.example.com", "*", "API.example.com:443")
	f.Add("*.api.example.com", "*.example.com", "app.*", "v1.api.example.com")
	f.Add("a", "*a", "a*", "aa")
	f.Add("x", "y", "z", "[::1]:80")
	f.Fuzz(func(t *testing.T, d1, d2, d3, authority string) {
		domains := []string{d1, d2, d3}
		for i, d := range domains {
			domains[i] = asciiLowerRef(d) // the builder lower-cases them
			if d == "" || strings.Count(d, "*") > 1 || (strings.Contains(d, "*") && d != "*" && !strings.HasPrefix(d, "*") && !strings.HasSuffix(d, "*")) {
				return // not a domain Istio or Envoy accepts
			}
		}
		// Duplicate domains are merged by the builder; keep the first.
		for i := range domains {
			for j := range i {
				if domains[i] == domains[j] {
					return
				}
			}
		}
		var hosts []VirtualHost
		for _, d := range domains {
			hosts = append(hosts, VirtualHost{Domain: d})
		}
		ix := newHostIndex(hosts)
		if got, want := ix.find(authority), referenceHost(domains, authority); got != want {
			t.Fatalf("domains %q, authority %q: index picks %d, reference %d", domains, authority, got, want)
		}
	})
}

// Routing by virtual host allocates nothing for a lower-case authority.
func TestVirtualHostRouteAllocates(t *testing.T) {
	tbl := NewHostTable([]VirtualHost{
		{Domain: "api.example.com", Rules: []Rule{{Matches: []Match{{Headers: []HeaderMatch{{Name: "env", Match: StringMatch{Kind: Exact, Value: "e"}}}}}}}},
		{Domain: "*", Rules: []Rule{{}}},
	})
	r := &Request{Headers: map[string][]string{"env": {"e"}}, Path: "/a.B/C", Authority: "api.example.com:443"}
	if n := testing.AllocsPerRun(100, func() { tbl.Route(r) }); n != 0 {
		t.Fatalf("%v allocations per route", n)
	}
}
