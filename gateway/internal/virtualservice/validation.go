package virtualservice

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// validate refuses what Istio's admission webhook refuses of the fields
// envgate reads (pkg/config/validation/validation.go ValidateVirtualService,
// validateHTTPRoute, validateHTTPRouteMatchRequest,
// validateHTTPRouteDestinations, and pkg/config/validation/agent
// ValidateWildcardDomain, ValidatePort, ValidateDuration), so an object
// that could never have been applied to the cluster is not routed by
// envgate either. Each error names the field.
func (o *Object) validate() error {
	var errs []error
	add := func(field string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
		}
	}
	if len(o.Spec.Hosts) == 0 {
		add("spec.hosts", errors.New("virtual service must have at least one host"))
	}
	allValid := true
	for i, h := range o.Spec.Hosts {
		if err := validateWildcardDomain(h); err != nil && net.ParseIP(h) == nil {
			add(fmt.Sprintf("spec.hosts[%d]", i), err)
			allValid = false
		}
	}
	if allValid {
		for i := range o.Spec.Hosts {
			for j := i + 1; j < len(o.Spec.Hosts); j++ {
				if hostsOverlap(o.Spec.Hosts[i], o.Spec.Hosts[j]) {
					add("spec.hosts", fmt.Errorf("duplicate hosts in virtual service: %s & %s", o.Spec.Hosts[i], o.Spec.Hosts[j]))
				}
			}
		}
	}
	for i, g := range o.Spec.Gateways {
		if g == "" {
			add(fmt.Sprintf("spec.gateways[%d]", i), errors.New("gateway name cannot be empty"))
		}
	}
	if len(o.Spec.HTTP) == 0 && !o.hasNonHTTPRoutes() {
		add("spec", errors.New("http, tcp or tls must be provided in virtual service"))
	}
	for i, h := range o.Spec.HTTP {
		p := fmt.Sprintf("spec.http[%d]", i)
		for j, m := range h.Match {
			mp := fmt.Sprintf("%s.match[%d]", p, j)
			for name := range m.Headers {
				add(mp+".headers", validateMatchHeaderName(name))
			}
			for name := range m.WithoutHeaders {
				add(mp+".withoutHeaders", validateMatchHeaderName(name))
			}
		}
		if h.Headers != nil {
			// Request set and add may name :authority (Istio rewrites it);
			// request removals and every response change may not.
			validateOps(add, p+".headers.request", h.Headers.Request, validateRequestSetName)
			validateOps(add, p+".headers.response", h.Headers.Response, validateHeaderOperationName)
		}
		for j, d := range h.Route {
			dp := fmt.Sprintf("%s.route[%d].destination", p, j)
			// validateDestination.
			if d.Destination.Host == "*" {
				add(dp+".host", errors.New("invalid destination host *"))
			} else {
				add(dp+".host", validateWildcardDomain(d.Destination.Host))
			}
			if d.Destination.Port != nil {
				add(dp+".port.number", validatePort(d.Destination.Port.Number))
			}
		}
		if h.Timeout != "" {
			add(p+".timeout", validateDuration(h.Timeout))
		}
	}
	return errors.Join(errs...)
}

// validateOps checks one side's header operations: set and add names with
// setName, removals with validateHeaderOperationName, values with
// validateHeaderValue.
func validateOps(add func(string, error), p string, ops *HeaderOps, setName func(string) error) {
	if ops == nil {
		return
	}
	for op, m := range map[string]map[string]string{"set": ops.Set, "add": ops.Add} {
		for name, v := range m {
			add(p+"."+op, setName(name))
			add(p+"."+op+"."+name, validateHeaderValue(v))
		}
	}
	for _, name := range ops.Remove {
		add(p+".remove", validateHeaderOperationName(name))
	}
}

// hasNonHTTPRoutes: tcp and tls routes count for Istio's "http, tcp or
// tls" check (envgate reports them as unimplemented fields).
func (o *Object) hasNonHTTPRoutes() bool {
	spec, _ := o.raw["spec"].(map[string]any)
	tcp, _ := spec["tcp"].([]any)
	tls, _ := spec["tls"].([]any)
	return len(tcp) > 0 || len(tls) > 0
}

// dns1123Label is pkg/config/labels DNS1123LabelFmt; wildcardLabel is its
// wildcardPrefix (a label "*", or one starting "*" or "*-").
var (
	dns1123Label  = regexp.MustCompile(`^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$`)
	wildcardLabel = regexp.MustCompile(`^(?:\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)$`)
)

// validateWildcardDomain is agent.ValidateWildcardDomain: a DNS name of at
// most 255 characters, a wildcard allowed in the first label only, a top
// level domain that is not all digits.
func validateWildcardDomain(domain string) error {
	if len(domain) > 255 {
		return fmt.Errorf("domain name %q too long (max 255)", domain)
	}
	if domain == "" {
		return errors.New("empty domain name not allowed")
	}
	first, rest, more := strings.Cut(domain, ".")
	if len(first) > 63 || !wildcardLabel.MatchString(first) {
		return fmt.Errorf("domain name %q invalid (label %q invalid)", domain, first)
	}
	if !more {
		return nil
	}
	parts := strings.Split(rest, ".")
	if _, err := strconv.Atoi(parts[len(parts)-1]); err == nil {
		return fmt.Errorf("domain name %q invalid (top level domain %q cannot be all-numeric)", domain, parts[len(parts)-1])
	}
	for i, label := range parts {
		if i == len(parts)-1 && label == "" {
			return nil // a trailing dot: istio.io.
		}
		if len(label) > 63 || !dns1123Label.MatchString(label) {
			return fmt.Errorf("domain name %q invalid (label %q invalid)", domain, label)
		}
	}
	return nil
}

// hostsOverlap is host.Name.Matches of Istio's duplicate-host check: equal
// names, or a wildcard that covers the other name.
func hostsOverlap(a, b string) bool {
	a, b = strings.ToLower(a), strings.ToLower(b)
	if a == b || a == "*" || b == "*" {
		return true
	}
	covers := func(w, n string) bool {
		return strings.HasPrefix(w, "*") && strings.HasSuffix(n, w[1:])
	}
	return covers(a, b) || covers(b, a)
}

// validHeaderName is validation.go validHeaderNameRegex: RFC 7230 tchars.
var validHeaderName = regexp.MustCompile("^[!#$%&'*+\\-.^_`|~A-Za-z0-9]+$")

// validateMatchHeaderName is ValidateHTTPHeaderNameOrJwtClaimRoute, for
// the names envgate can match (pseudo-headers and tokens; JWT claims are
// not implemented and rejected as a field).
func validateMatchHeaderName(name string) error {
	switch {
	case name == "":
		return errors.New("header name cannot be empty")
	case name == ":method" || name == ":scheme" || name == ":authority" || name == ":path" || name == ":status":
		return nil
	case !validHeaderName.MatchString(name):
		return fmt.Errorf("header name %s is not a valid header name", name)
	}
	return nil
}

// validateRequestSetName is ValidateHTTPHeaderWithAuthorityOperationName
// (no pseudo-header but :authority), plus what envgate does not implement:
// rewriting the authority through headers.
func validateRequestSetName(name string) error {
	switch {
	case name == "":
		return errors.New("header name cannot be empty")
	case strings.EqualFold(name, ":authority") || strings.EqualFold(name, "host"):
		return fmt.Errorf("header %q: rewriting the authority is not implemented by envgate (Istio accepts it)", name)
	case strings.HasPrefix(name, ":"):
		return fmt.Errorf(`invalid header %q: header cannot have ":" prefix`, name)
	}
	return nil
}

// validateHeaderOperationName is ValidateHTTPHeaderOperationName, for
// request removals and response changes.
func validateHeaderOperationName(name string) error {
	switch {
	case name == "":
		return errors.New("header name cannot be empty")
	case strings.EqualFold(name, "host"):
		return fmt.Errorf("invalid header %q: cannot set Host header", name)
	case strings.HasPrefix(name, ":"):
		return fmt.Errorf(`invalid header %q: header cannot have ":" prefix`, name)
	}
	return nil
}

// validateHeaderValue is ValidateHTTPHeaderValue's character check
// (httpHeaderValueRegexp: no control character but tab).
func validateHeaderValue(v string) error {
	for _, c := range v {
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return fmt.Errorf("header value configuration %q is invalid", v)
		}
	}
	return nil
}

// validatePort is agent.ValidatePort.
func validatePort(p uint32) error {
	if p < 1 || p > 65535 {
		return fmt.Errorf("port number %d must be in the range 1..65535", p)
	}
	return nil
}

// validateDuration is agent.ValidateDuration: at least 1ms, in whole
// milliseconds.
func validateDuration(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if d < time.Millisecond {
		return errors.New("duration must be greater than 1ms")
	}
	if d%time.Millisecond != 0 {
		return errors.New("only durations to ms precision are supported")
	}
	return nil
}
