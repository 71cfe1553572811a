// Package routing is the gateway's live routing state: the table calls are
// routed by, the VirtualService merge it was built from (nil in the
// one-header form), and the views of them for people (explain, /routes).
// A new configuration swaps both at once; calls in flight keep the rule
// they started with.
package routing

import (
	"log/slog"
	"sync/atomic"

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
