// Package admin serves the gateway's two HTTP sides, split as Istio's
// gateway splits them: health for the load balancer and the kubelet
// (/healthz/ready, /healthz/live on :15021, the seed's BackendConfig check),
// and a debug side (/metrics for Prometheus, /routes and /explain for
// people) on a listener of its own, loopback by default, since it shows
// endpoint addresses and routing to whoever can reach it.
package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
)

// Health answers /healthz/ready with 200 while ready returns nil and 503
// with its error otherwise, and /healthz/live with 200 while the process
// serves at all. Nothing else is served.
func Health(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /healthz/live", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "live")
	})
	return mux
}

// Debug says what the debug listener serves; a nil field is left out.
type Debug struct {
	// Metrics serves /metrics.
	Metrics http.Handler
	// Routes returns the live routing table and endpoints, served as JSON
	// at /routes.
	Routes func() any
	// Explain says how a request described by the query would be routed,
	// served as JSON at /explain.
	Explain func(*http.Request) any
	// Pprof serves net/http/pprof at /debug/pprof/.
	Pprof bool
}

// Handler serves d.
func (d Debug) Handler() http.Handler {
	mux := http.NewServeMux()
	if d.Metrics != nil {
		mux.Handle("GET /metrics", d.Metrics)
	}
	if d.Routes != nil {
		mux.HandleFunc("GET /routes", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, d.Routes()) })
	}
	if d.Explain != nil {
		mux.HandleFunc("GET /explain", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, d.Explain(r)) })
	}
	if d.Pprof {
		// Mounted here: the package's init also registers them on
		// http.DefaultServeMux, which nothing in the gateway serves.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
