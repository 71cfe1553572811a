// Package route holds the routing table: from the attributes of one request
// to a rule and its action, or a refusal. It is pure (no I/O) and
// allocation-free when choosing a route, because it runs once per call.
//
// The table has Istio's HTTP route semantics as they apply to gRPC: rules in
// order, the first match wins; the match blocks of a rule are ORed and the
// conditions inside one block ANDed; header names are matched
// case-insensitively (gRPC metadata keys are lower case on the wire), values
// case-sensitively, several values of one header joined with "," first, as
// Envoy does. The seed's form, one exact `env` header rule per environment,
// is the simple case and takes a map lookup.
package route

import (
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Destination names the service a call is sent to: a Kubernetes Service in a
// namespace, reached on a port. It is comparable and used as a map key.
type Destination struct {
	Namespace string
	Service   string
	// Port is the Service port's name ("grpc") or number, as discovery
	// resolves it; "" when the route gave none (the Service's only port,
	// else the configured one, as Istio picks).
	Port string
	// Subset is a DestinationRule subset of the service ("" for all its
	// endpoints).
	Subset string
	// NoService, when set, is a destination host as written that names no
	// Kubernetes service as Istio resolves hosts (it does not expand
	// "name.namespace"): Envoy has no cluster for it, and calls routed
	// there fail.
	NoService string
}

// String is the destination's cluster-local host name and port.
func (d Destination) String() string {
	if d.NoService != "" {
		return d.NoService + " (no such service)"
	}
	h := d.Service + "." + d.Namespace + ".svc.cluster.local"
	if d.Port != "" {
		h += ":" + d.Port
	}
	if d.Subset != "" {
		h += " subset " + d.Subset
	}
	return h
}

// Host is the destination service's cluster-local host name, as Istio's
// destination_service names it; "" for a service that does not exist.
func (d Destination) Host() string {
	if d.NoService != "" || d.Service == "" {
		return ""
	}
	return namesOf(d.Service, d.Namespace).host
}

// Key is how discovery names the destination's service; discovery maps the
// port to one of its endpoint sets.
func (d Destination) Key() string { return namesOf(d.Service, d.Namespace).key }

// destNames are a service's Key and Host, made once.
type destNames struct{ service, namespace, key, host string }

// nameCache keeps the names of recent destinations, a slot per hash of
// service and namespace: every call asks its destination's names, and
// making them was two allocations a call. A gateway routes to a few
// services per environment; past the slots' count a colliding pair
// replaces the other's names, which are made again when next asked. Its
// size is fixed, whatever namespaces clients' headers name.
var (
	nameCache [1024]atomic.Pointer[destNames]
	nameSeed  = maphash.MakeSeed()
)

func namesOf(service, namespace string) *destNames {
	i := (maphash.String(nameSeed, service)*31 + maphash.String(nameSeed, namespace)) % uint64(len(nameCache))
	if n := nameCache[i].Load(); n != nil && n.service == service && n.namespace == namespace {
		return n
	}
	key := service + "." + namespace
	n := &destNames{service: service, namespace: namespace, key: key, host: key + ".svc.cluster.local"}
	nameCache[i].Store(n)
	return n
}

// Request is what rules look at. Headers holds lower-case names.
type Request struct {
	Headers   map[string][]string
	Path      string // :path: /package.Service/Method, or an HTTP path with its query
	Authority string
	Method    string // :method ("" matches no method condition)
}

// HeaderMatch is a condition on one header.
type HeaderMatch struct {
	Name  string // lower case
	Match StringMatch
}

// Match is one match block: all its conditions must hold. A nil URI or
// Authority matches anything.
type Match struct {
	Name           string
	Headers        []HeaderMatch
	WithoutHeaders []HeaderMatch // each must not match; an absent header counts as "" (a presence match: absent)
	URI            *StringMatch
	Authority      *StringMatch
	Method         *StringMatch
}

// Matches reports whether the request satisfies the block.
func (m *Match) Matches(r *Request) bool {
	for i := range m.Headers {
		h := &m.Headers[i]
		if !h.Match.MatchValues(r.Headers[h.Name]) {
			return false
		}
	}
	for i := range m.WithoutHeaders {
		h := &m.WithoutHeaders[i]
		if h.Match.MatchValuesMissingAsEmpty(r.Headers[h.Name]) {
			return false
		}
	}
	if m.URI != nil && !m.URI.MatchString(matchedPath(m.URI.Kind, r.Path)) {
		return false
	}
	if m.Method != nil && !m.Method.MatchString(r.Method) {
		return false
	}
	if m.Authority != nil && !m.Authority.MatchString(r.Authority) {
		return false
	}
	return true
}

// matchedPath is the part of :path a URI match looks at, as Envoy's route
// entries do (source/common/router/config_impl.cc: PathRouteEntryImpl and
// RegexRouteEntryImpl match the path "once the query string is removed",
// Http::PathUtil::removeQueryAndFragment; PrefixRouteEntryImpl matches the
// whole :path, query included).
func matchedPath(k MatchKind, path string) string {
	if k == Prefix {
		return path
	}
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		return path[:i]
	}
	return path
}

// WeightedDestination is one destination of a route and its share.
type WeightedDestination struct {
	Destination
	Weight int32
}

// HeaderOps change headers: set replaces, add appends, remove deletes.
type HeaderOps struct {
	Set    map[string]string
	Add    map[string]string
	Remove []string
}

// Empty reports whether the ops change nothing.
func (h HeaderOps) Empty() bool { return len(h.Set) == 0 && len(h.Add) == 0 && len(h.Remove) == 0 }

// Retries is Istio's HTTPRetry: how many times more a failed call is tried
// (on a newly picked endpoint), each try bounded by PerTryTimeout, when it
// failed for one of RetryOn's conditions.
type Retries struct {
	Attempts      int
	PerTryTimeout time.Duration
	RetryOn       []string
}

// DefaultRetries is what Istio applies to a route without a retry policy
// (meshConfig.defaultHttpRetryPolicy unset): 2 retries on connection
// failures, refused streams, UNAVAILABLE and CANCELLED.
var DefaultRetries = Retries{Attempts: 2, RetryOn: []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}}

// Action is what a rule does with a matching call.
type Action struct {
	Destinations    []WeightedDestination
	Timeout         time.Duration // 0: the client's deadline rules
	Retries         Retries
	RequestHeaders  HeaderOps
	ResponseHeaders HeaderOps
	// Rewrite changes the path and authority the upstream sees.
	Rewrite *Rewrite
	// Redirect and DirectResponse, when set, are answered by the gateway:
	// the action has no destination.
	Redirect       *Redirect
	DirectResponse *DirectResponse
}

// Rewrite is Istio's HTTPRewrite: URI replaces the part of the path the
// match's URI matched (Envoy's prefix_rewrite), Authority the authority.
type Rewrite struct {
	URI       string
	Authority string
}

// Redirect is Istio's HTTPRedirect: a 3xx to the same URL with the parts
// set here replaced.
type Redirect struct {
	URI       string
	Authority string
	Scheme    string
	Port      uint32 // 0: the request's
	// PortFromRequest (derivePort FROM_REQUEST_PORT) redirects to the
	// port the request came in on; DefaultPort (FROM_PROTOCOL_DEFAULT)
	// to the scheme's default (no port in the URL).
	PortFromRequest, DefaultPort bool
	Code                         int // 301 unless set
}

// DirectResponse is Istio's HTTPDirectResponse: the gateway answers with
// Status and Body.
type DirectResponse struct {
	Status int
	Body   string
}

// Pick chooses a destination by weight from a number r in [0, 1): share =
// weight / sum of weights, and a weight of 0 gets nothing.
func (a *Action) Pick(r float64) (Destination, bool) {
	switch len(a.Destinations) {
	case 0:
		return Destination{}, false
	case 1:
		return a.Destinations[0].Destination, true
	}
	var total int64
	for _, d := range a.Destinations {
		total += int64(d.Weight)
	}
	if total == 0 {
		return Destination{}, false
	}
	at := int64(r * float64(total))
	for _, d := range a.Destinations {
		if at < int64(d.Weight) {
			return d.Destination, true
		}
		at -= int64(d.Weight)
	}
	return a.Destinations[len(a.Destinations)-1].Destination, true
}

// Rule is one HTTP route of a VirtualService (or of the simple form).
type Rule struct {
	// Source names where the rule came from: "namespace/name http[i]".
	Source string
	// Hosts are the VirtualService's hosts, matched against the authority
	// (without its port); none, or "*", matches any.
	Hosts []string
	// Matches are ORed; none matches every request.
	Matches []Match
	Action  Action
}

// HostMatches reports whether the authority is one of the rule's hosts.
func (r *Rule) HostMatches(authority string) bool {
	if len(r.Hosts) == 0 {
		return true
	}
	host := stripPort(authority)
	for _, h := range r.Hosts {
		switch {
		case h == "*" || h == host:
			return true
		case strings.HasPrefix(h, "*.") && strings.HasSuffix(host, h[1:]):
			return true
		}
	}
	return false
}

// Match returns the index of the first block that matches, or -1.
func (r *Rule) Match(req *Request) int {
	if !r.HostMatches(req.Authority) {
		return -1
	}
	if len(r.Matches) == 0 {
		return 0
	}
	for i := range r.Matches {
		if r.Matches[i].Matches(req) {
			return i
		}
	}
	return -1
}

// Table is an ordered list of rules. It is immutable once built, so readers
// need no lock; a new configuration builds a new Table.
type Table struct {
	// envHeader is set for the simple form: every rule is one exact match
	// on this header, looked up in exact.
	envHeader string
	exact     map[string]int
	rules     []Rule // every rule; of every virtual host, in host order
	// hosts, when set, are the virtual hosts: a request is matched against
	// the rules of the one its authority selects (vhost.go).
	hosts []VirtualHost
	index hostIndex
}

// EnvRule is the simple form's rule: header value -> destination.
type EnvRule struct {
	Value       string
	Destination Destination
}

// NewEnvTable builds the seed's routing: the header (matched
// case-insensitively) equal to a rule's value routes to its destination.
// Values must be unique and non-empty.
func NewEnvTable(header string, envs []EnvRule) (*Table, error) {
	header = strings.ToLower(strings.TrimSpace(header))
	if header == "" {
		return nil, errors.New("route: header name is empty")
	}
	t := &Table{envHeader: header, exact: make(map[string]int, len(envs))}
	for _, e := range envs {
		if e.Value == "" {
			return nil, fmt.Errorf("route: rule for %v has an empty header value", e.Destination)
		}
		if _, dup := t.exact[e.Value]; dup {
			return nil, fmt.Errorf("route: two rules for %s=%q", header, e.Value)
		}
		t.exact[e.Value] = len(t.rules)
		t.rules = append(t.rules, Rule{
			Source:  fmt.Sprintf("environment %s", e.Value),
			Matches: []Match{{Headers: []HeaderMatch{{Name: header, Match: StringMatch{Kind: Exact, Value: e.Value}}}}},
			Action:  Action{Destinations: []WeightedDestination{{Destination: e.Destination, Weight: 100}}, Retries: DefaultRetries},
		})
	}
	return t, nil
}

// NewTable builds a table of general rules, in order.
func NewTable(rules []Rule) *Table { return &Table{rules: rules} }

// EnvHeader is the header of the simple form, "" for general tables.
func (t *Table) EnvHeader() string { return t.envHeader }

// Rules are the rules in order. The slice is shared: do not modify it.
func (t *Table) Rules() []Rule { return t.rules }

// Route returns the first rule the request matches. It does not allocate.
func (t *Table) Route(r *Request) (*Rule, bool) {
	if t.exact != nil {
		values := r.Headers[t.envHeader]
		switch len(values) {
		case 0:
			return nil, false
		case 1:
			i, ok := t.exact[values[0]]
			if !ok {
				return nil, false
			}
			return &t.rules[i], true
		}
	}
	rules := t.rules
	if t.hosts != nil {
		i := t.index.find(r.Authority)
		if i < 0 {
			return nil, false
		}
		rules = t.hosts[i].Rules
	}
	for i := range rules {
		if rules[i].Match(r) >= 0 {
			return &rules[i], true
		}
	}
	return nil, false
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
	Header string // the environment header, "" for general tables
	Values []string
	Path   string
}

// maxEchoed bounds what of a client's value a refusal repeats: the
// message goes back to the client and into the access log, and must not
// grow with what the client sent.
const maxEchoed = 64

// Truncate returns s cut to n bytes at most, saying how long it was.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:cut], len(s))
}

func (e *NoRouteError) Error() string {
	switch {
	case e.Header == "":
		return fmt.Sprintf("no route matched %s", Truncate(e.Path, 4*maxEchoed))
	case len(e.Values) == 0:
		return fmt.Sprintf("no route: the request has no %q header", e.Header)
	case len(e.Values) == 1 && e.Values[0] == "":
		return fmt.Sprintf("no route: the %q header is empty", e.Header)
	default:
		v := e.Values[0]
		if len(e.Values) > 1 {
			v = strings.Join(e.Values[:min(len(e.Values), 4)], ",")
			if len(e.Values) > 4 {
				v += fmt.Sprintf(",...(%d values)", len(e.Values))
			}
		}
		return fmt.Sprintf("no route for %s=%q", e.Header, Truncate(v, maxEchoed))
	}
}
