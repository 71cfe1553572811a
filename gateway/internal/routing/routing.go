// Package routing is the gateway's live routing state: the table calls are
// routed by, the VirtualService merge it was built from (nil in the
// one-header form), and the views of them for people (explain, /routes).
// A new configuration swaps both at once; calls in flight keep the rule
// they started with.
package routing

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/envgate/envgate/gateway/internal/destinationrule"
	"github.com/envgate/envgate/gateway/internal/route"
	"github.com/envgate/envgate/gateway/internal/virtualservice"
)

// State is the live routing state. Its methods may be called from any
// goroutine.
type State struct {
	vsMode bool
	log    *slog.Logger
	// snap is the table and the merge it came from, swapped together so a
	// reader never pairs a table with another merge's report.
	snap atomic.Pointer[snapshot]
	// drs are the DestinationRules in force, with their lookups memoized.
	drs atomic.Pointer[policies]
}

type snapshot struct {
	table *route.Table
	vs    *virtualservice.Result
}

// New returns the state for table, built from vs (nil: the one-header
// form, which stays so).
func New(table *route.Table, vs *virtualservice.Result, log *slog.Logger) *State {
	s := &State{vsMode: vs != nil, log: log}
	s.snap.Store(&snapshot{table, vs})
	return s
}

// Table is the current routing table.
func (s *State) Table() *route.Table { return s.snap.Load().table }

// VirtualServices is the merge the table was built from; nil in the
// one-header form.
func (s *State) VirtualServices() *virtualservice.Result { return s.snap.Load().vs }

// VirtualServiceMode reports whether routing follows VirtualServices.
func (s *State) VirtualServiceMode() bool { return s.vsMode }

// ApplyVirtualServices swaps in a new merge of VirtualServices and its
// table, and logs what the merge reported.
func (s *State) ApplyVirtualServices(res *virtualservice.Result) {
	s.snap.Store(&snapshot{route.NewHostTable(res.Hosts), res})
	Log(s.log, res)
}

// SetTable swaps in a new table of the one-header form (the environments
// changed).
func (s *State) SetTable(t *route.Table) {
	s.snap.Store(&snapshot{t, s.snap.Load().vs})
}

// ApplyDestinationRules swaps in a new merge of DestinationRules, and logs
// what it refused.
func (s *State) ApplyDestinationRules(res *destinationrule.Result) {
	s.drs.Store(&policies{res: res})
	for _, is := range res.Issues {
		s.log.Warn("destinationrule field not implemented", "object", is.Object, "field", is.Field)
	}
	for obj, why := range res.Rejected {
		s.log.Error("destinationrule rejected", "object", obj, "reason", why)
	}
	for obj, why := range res.Unbound {
		s.log.Info("destinationrule not visible to the gateway", "object", obj, "reason", why)
	}
	s.log.Info("destinationrules applied", "objects", res.Applied)
}

// DestinationRules is the merge in force (nil without any).
func (s *State) DestinationRules() *destinationrule.Result {
	if p := s.drs.Load(); p != nil {
		return p.res
	}
	return nil
}

// Policy is the DestinationRule policy for calls to d on the Service port
// port (0: unknown). Lookups are memoized per merge, so a call pays a map
// read.
func (s *State) Policy(d route.Destination, port uint32) (destinationrule.Policy, error) {
	p := s.drs.Load()
	if p == nil {
		if d.Subset != "" {
			return destinationrule.Policy{}, fmt.Errorf("%w: no DestinationRule defines subset %q of %s", destinationrule.ErrNoSubset, d.Subset, d)
		}
		return destinationrule.Policy{}, nil
	}
	k := policyKey{d.Service, d.Namespace, d.Subset, port}
	if v, ok := p.memo.Load(k); ok {
		r := v.(*lookup)
		return r.policy, r.err
	}
	pol, err := p.res.Lookup(d.Service+"."+d.Namespace+".svc.cluster.local", d.Namespace, d.Subset, port)
	p.memo.Store(k, &lookup{pol, err})
	return pol, err
}

// policies is one merge of DestinationRules and its memoized lookups,
// bounded by the routes' destinations (a new merge starts afresh).
type policies struct {
	res  *destinationrule.Result
	memo sync.Map // policyKey -> *lookup
}

type policyKey struct {
	service, namespace, subset string
	port                       uint32
}

type lookup struct {
	policy destinationrule.Policy
	err    error
}

// Log reports every unimplemented field, dropped rule, rejected and
// unbound object of a merge.
func Log(log *slog.Logger, res *virtualservice.Result) {
	for _, is := range res.Issues {
		if is.Note != "" {
			log.Warn("virtualservice rules dropped", "object", is.Object, "field", is.Field, "why", is.Note)
			continue
		}
		log.Warn("virtualservice field not implemented", "object", is.Object, "field", is.Field, "rejectsObject", is.Rejects)
	}
	for obj, why := range res.Rejected {
		log.Error("virtualservice rejected", "object", obj, "reason", why)
	}
	for obj, why := range res.Unbound {
		log.Info("virtualservice not bound to the gateway", "object", obj, "reason", why)
	}
	log.Info("virtualservices applied", "objects", res.Applied)
}
