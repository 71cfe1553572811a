package destinationrule

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// RootNamespace is Istio's default root namespace: its DestinationRules
// apply mesh-wide when exported.
const RootNamespace = "istio-system"

// Result is the DestinationRules visible to the gateway, merged per host
// and namespace as Istio merges them.
type Result struct {
	proxyNS string
	// byNS holds, per namespace, its rules visible to the gateway's proxy,
	// merged per host.
	byNS     map[string][]*rule
	Issues   []Issue
	Rejected map[string]string // object -> reason
	// Unbound are the objects not visible to the gateway, and why.
	Unbound map[string]string
	Applied []string // objects in force, oldest first
}

// rule is the DestinationRules of one namespace for one host, merged: the
// oldest object's trafficPolicy, every object's subsets (the first of a
// name wins), as pilot/pkg/model/destination_rule.go mergeDestinationRule.
type rule struct {
	host    string // resolved: an FQDN or a wildcard
	from    []string
	policy  *TrafficPolicy
	subsets []Subset
}

// Build validates and merges objs as seen from a gateway whose proxies run
// in proxyNS.
func Build(objs []*Object, proxyNS string) *Result {
	res := &Result{proxyNS: proxyNS, byNS: map[string][]*rule{}, Rejected: map[string]string{}, Unbound: map[string]string{}}
	sorted := slices.Clone(objs)
	// pilot/pkg/model/config.go configCompareByCreationTime.
	slices.SortStableFunc(sorted, func(a, b *Object) int {
		if c := a.Metadata.CreationTimestamp.Compare(b.Metadata.CreationTimestamp); c != 0 {
			return c
		}
		if c := strings.Compare(a.Metadata.Name, b.Metadata.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Metadata.Namespace, b.Metadata.Namespace)
	})
	for _, o := range sorted {
		if is := o.unimplemented(); len(is) > 0 {
			res.Issues = append(res.Issues, is...)
			var fields []string
			for _, i := range is {
				fields = append(fields, i.Field)
			}
			res.Rejected[o.Name()] = "unimplemented fields that change how calls are sent: " + strings.Join(fields, ", ")
			continue
		}
		if err := o.validate(); err != nil {
			res.Rejected[o.Name()] = "refused as Istio's validation refuses it: " + strings.ReplaceAll(err.Error(), "\n", "; ")
			continue
		}
		ns := o.Metadata.Namespace
		if ns != proxyNS && !o.exportedTo(proxyNS) {
			// Invisible to the gateway, as to Istio's: said, not dropped
			// silently.
			res.Unbound[o.Name()] = fmt.Sprintf("spec.exportTo %v does not include the gateway's namespace %q", o.Spec.ExportTo, proxyNS)
			continue
		}
		host := resolveHost(o.Spec.Host, ns)
		res.Applied = append(res.Applied, o.Name())
		var r *rule
		for _, have := range res.byNS[ns] {
			if have.host == host {
				r = have
			}
		}
		if r == nil {
			r = &rule{host: host}
			res.byNS[ns] = append(res.byNS[ns], r)
		}
		r.from = append(r.from, o.Name())
		if r.policy == nil {
			r.policy = o.Spec.TrafficPolicy
		}
		for _, s := range o.Spec.Subsets {
			if !slices.ContainsFunc(r.subsets, func(h Subset) bool { return h.Name == s.Name }) {
				r.subsets = append(r.subsets, s)
			}
		}
	}
	return res
}

// exportedTo reports whether spec.exportTo makes the object visible in ns
// ("*" or absent: everywhere; ".": its own namespace).
func (o *Object) exportedTo(ns string) bool {
	if len(o.Spec.ExportTo) == 0 {
		return true
	}
	for _, e := range o.Spec.ExportTo {
		if e == "*" || e == ns || (e == "." && o.Metadata.Namespace == ns) {
			return true
		}
	}
	return false
}

// Policy is what applies to calls to one destination host, subset and port.
type Policy struct {
	// From names the objects the policy comes from ("" when none applies).
	From             string
	TLS              *ClientTLS
	LoadBalancer     *LoadBalancer
	OutlierDetection *OutlierDetection
	ConnectionPool   *ConnectionPool
	// Subset and Labels select the endpoints of a subset (nil: all).
	Subset string
	Labels map[string]string
}

// ErrNoSubset is wrapped by Lookup when the subset is not defined for the
// host: Istio's cluster for it does not exist and Envoy answers 503.
var ErrNoSubset = errors.New("no such subset")

// Lookup returns the policy for calls to host (an FQDN) of namespace svcNS,
// on Service port port (0: unknown), in subset ("" for none). The rule is
// found as Istio finds a gateway's (pilot/pkg/model/push_context.go
// destinationRule): the proxy's namespace first, then the service's, then
// the root namespace, each by the most specific host; the port-level and
// subset policies then apply as pilot/pkg/networking/util/util.go
// MergeSubsetTrafficPolicy says.
func (r *Result) Lookup(host, svcNS, subset string, port uint32) (Policy, error) {
	var found *rule
	if r != nil {
		for _, ns := range []string{r.proxyNS, svcNS, RootNamespace} {
			if found = mostSpecific(r.byNS[ns], host); found != nil {
				break
			}
		}
	}
	if found == nil {
		if subset != "" {
			return Policy{}, fmt.Errorf("%w: no DestinationRule defines subset %q of %s", ErrNoSubset, subset, host)
		}
		return Policy{}, nil
	}
	p := Policy{From: strings.Join(found.from, ", ")}
	tp := portLevel(found.policy, port)
	if subset != "" {
		i := slices.IndexFunc(found.subsets, func(s Subset) bool { return s.Name == subset })
		if i < 0 {
			return Policy{}, fmt.Errorf("%w: %s (DestinationRule %s) defines no subset %q", ErrNoSubset, host, p.From, subset)
		}
		s := found.subsets[i]
		p.Subset, p.Labels = s.Name, s.Labels
		if s.TrafficPolicy != nil {
			sp, hasPortLevel := portLevelOK(s.TrafficPolicy, port)
			tp = mergePolicy(tp, sp, hasPortLevel)
		}
	}
	if tp != nil {
		p.TLS, p.LoadBalancer, p.OutlierDetection, p.ConnectionPool = tp.TLS, tp.LoadBalancer, tp.OutlierDetection, tp.ConnectionPool
	}
	return p, nil
}

// mostSpecific is the rule whose host is host, else the longest wildcard
// covering it (pilot/pkg/model MostSpecificHostMatch).
func mostSpecific(rules []*rule, host string) *rule {
	var best *rule
	for _, r := range rules {
		switch {
		case r.host == host:
			return r
		case r.host == "*" || (strings.HasPrefix(r.host, "*") && strings.HasSuffix(host, r.host[1:])):
			if best == nil || len(r.host) > len(best.host) {
				best = r
			}
		}
	}
	return best
}

// portLevel is util.go GetPortLevelTrafficPolicy: the port's settings
// replace the destination-level ones whole (no inheritance), else the
// destination-level policy.
func portLevel(tp *TrafficPolicy, port uint32) *TrafficPolicy {
	p, _ := portLevelOK(tp, port)
	return p
}

func portLevelOK(tp *TrafficPolicy, port uint32) (*TrafficPolicy, bool) {
	if tp == nil || port == 0 {
		return tp, false
	}
	for _, pp := range tp.PortLevelSettings {
		if pp.Port != nil && pp.Port.Number == port {
			return &TrafficPolicy{LoadBalancer: pp.LoadBalancer, ConnectionPool: pp.ConnectionPool, OutlierDetection: pp.OutlierDetection, TLS: pp.TLS}, true
		}
	}
	return tp, false
}

// mergePolicy is model.MergeTrafficPolicy: the subset's components replace
// the destination's where set, and all of them when the subset has
// settings for the port.
func mergePolicy(base, subset *TrafficPolicy, hasPortLevel bool) *TrafficPolicy {
	if base == nil {
		return subset
	}
	m := *base
	if subset.ConnectionPool != nil || hasPortLevel {
		m.ConnectionPool = subset.ConnectionPool
	}
	if subset.OutlierDetection != nil || hasPortLevel {
		m.OutlierDetection = subset.OutlierDetection
	}
	if subset.LoadBalancer != nil || hasPortLevel {
		m.LoadBalancer = subset.LoadBalancer
	}
	if subset.TLS != nil || hasPortLevel {
		m.TLS = subset.TLS
	}
	return &m
}

var dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// validate refuses what pkg/config/validation/validation.go
// ValidateDestinationRule refuses of the fields envgate reads.
func (o *Object) validate() error {
	var errs []error
	if o.Spec.Host == "" {
		errs = append(errs, errors.New("spec.host: empty domain name not allowed"))
	}
	seen := map[string]bool{}
	for i, s := range o.Spec.Subsets {
		switch {
		case s.Name == "":
			errs = append(errs, fmt.Errorf("spec.subsets[%d].name: subset name cannot be empty", i))
		case !dns1123Label.MatchString(s.Name) || len(s.Name) > 63:
			errs = append(errs, fmt.Errorf("spec.subsets[%d].name: subset name is invalid: %s", i, s.Name))
		case seen[s.Name]:
			errs = append(errs, fmt.Errorf("spec.subsets[%d].name: duplicate subset names: %s", i, s.Name))
		}
		seen[s.Name] = true
		if s.TrafficPolicy != nil {
			errs = append(errs, validatePolicy(fmt.Sprintf("spec.subsets[%d].trafficPolicy", i), s.TrafficPolicy)...)
		}
	}
	if o.Spec.TrafficPolicy != nil {
		errs = append(errs, validatePolicy("spec.trafficPolicy", o.Spec.TrafficPolicy)...)
	}
	return errors.Join(errs...)
}

// validatePolicy is validation.go validateTrafficPolicy for the fields
// envgate reads: a known load balancer, outlier durations and percentages,
// TLS as agent/validation.go ValidateTLS.
func validatePolicy(path string, tp *TrafficPolicy) []error {
	var errs []error
	check := func(p string, lb *LoadBalancer, cp *ConnectionPool, od *OutlierDetection, t *ClientTLS) {
		// validation.go validateConnectionPool.
		if cp != nil {
			switch h := cp.HTTP; {
			case h == nil:
				errs = append(errs, fmt.Errorf("%s.connectionPool: connection pool must have at least one field", p))
			case h.HTTP2MaxRequests < 0:
				errs = append(errs, fmt.Errorf("%s.connectionPool.http: http2 max requests must be non-negative", p))
			case h.MaxRequestsPerConnection < 0:
				errs = append(errs, fmt.Errorf("%s.connectionPool.http: max requests per connection must be non-negative", p))
			case h.MaxRetries < 0:
				errs = append(errs, fmt.Errorf("%s.connectionPool.http: max retries must be non-negative", p))
			}
		}
		if lb != nil {
			switch lb.Simple {
			case "", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM":
			default:
				errs = append(errs, fmt.Errorf("%s.loadBalancer.simple: %q is not ROUND_ROBIN, LEAST_REQUEST or RANDOM (envgate implements no other)", p, lb.Simple))
			}
		}
		if od != nil {
			for name, d := range map[string]string{"interval": od.Interval, "baseEjectionTime": od.BaseEjectionTime} {
				if d == "" {
					continue
				}
				v, err := time.ParseDuration(d)
				switch {
				case err != nil:
					errs = append(errs, fmt.Errorf("%s.outlierDetection.%s: %w", p, name, err))
				case v < time.Millisecond: // agent.ValidateDuration
					errs = append(errs, fmt.Errorf("%s.outlierDetection.%s: duration must be greater than 1ms", p, name))
				case v%time.Millisecond != 0:
					errs = append(errs, fmt.Errorf("%s.outlierDetection.%s: only durations to ms precision are supported", p, name))
				}
			}
			if m := od.MaxEjectionPercent; m != nil && (*m < 0 || *m > 100) {
				errs = append(errs, fmt.Errorf("%s.outlierDetection.maxEjectionPercent: percentage %d is not in range 0..100", p, *m))
			}
		}
		if t != nil {
			switch t.Mode {
			case "", "DISABLE", "SIMPLE", "ISTIO_MUTUAL":
			case "MUTUAL":
				if t.ClientCertificate == "" {
					errs = append(errs, fmt.Errorf("%s.tls: client certificate required for mutual tls", p))
				}
				if t.PrivateKey == "" {
					errs = append(errs, fmt.Errorf("%s.tls: private key required for mutual tls", p))
				}
			default:
				errs = append(errs, fmt.Errorf("%s.tls.mode: %q is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL", p, t.Mode))
			}
		}
	}
	check(path, tp.LoadBalancer, tp.ConnectionPool, tp.OutlierDetection, tp.TLS)
	for i, pp := range tp.PortLevelSettings {
		p := fmt.Sprintf("%s.portLevelSettings[%d]", path, i)
		if pp.Port == nil || pp.Port.Number < 1 || pp.Port.Number > 65535 {
			errs = append(errs, fmt.Errorf("%s.port: port number must be in the range 1..65535", p))
		}
		check(p, pp.LoadBalancer, pp.ConnectionPool, pp.OutlierDetection, pp.TLS)
	}
	return errs
}
