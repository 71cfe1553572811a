// Package admin serves the gateway's health over HTTP: readiness for the load
// balancer (the seed's BackendConfig checks /healthz/ready on port 15021) and
// liveness for the kubelet.
package admin

import (
	"fmt"
	"net/http"
)

// Handler answers /healthz/ready with 200 while ready returns nil and 503
// with its error otherwise, and /healthz/live with 200 while the process
// serves at all.
func Handler(ready func() error) http.Handler {
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
