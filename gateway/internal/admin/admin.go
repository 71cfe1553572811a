// Package admin serves the gateway's health, metrics and routing view over
// HTTP: readiness for the load balancer (the seed's BackendConfig checks
// /healthz/ready on port 15021), liveness for the kubelet, /metrics for
// Prometheus and /routes for people.
package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Options say what the admin handler serves.
type Options struct {
	// Ready returns nil while the gateway should receive traffic.
	Ready func() error
	// Metrics serves /metrics; nil leaves it out.
	Metrics http.Handler
	// Routes returns the live routing table and endpoints, served as JSON
	// at /routes; nil leaves it out.
	Routes func() any
	// Explain says how a request described by the query would be routed,
	// served as JSON at /explain; nil leaves it out.
	Explain func(*http.Request) any
}

// Handler answers /healthz/ready with 200 while Ready returns nil and 503
// with its error otherwise, /healthz/live with 200 while the process serves
// at all, and /metrics and /routes when given.
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := o.Ready(); err != nil {
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
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	if o.Routes != nil {
		mux.HandleFunc("GET /routes", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, o.Routes()) })
	}
	if o.Explain != nil {
		mux.HandleFunc("GET /explain", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, o.Explain(r)) })
	}
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
