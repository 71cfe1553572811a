package admin

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestReadiness(t *testing.T) {
	var err error = errors.New("discovery has not synced")
	h := Handler(Options{Ready: func() error { return err }, Routes: func() any { return map[string]int{"routes": 2} }})
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/healthz/ready"); code != 503 || !strings.Contains(body, "discovery has not synced") {
		t.Fatalf("not ready: %d %q", code, body)
	}
	if code, _ := get("/healthz/live"); code != 200 {
		t.Fatalf("live: %d", code)
	}
	err = nil
	if code, _ := get("/healthz/ready"); code != 200 {
		t.Fatalf("ready: %d", code)
	}
	if code, body := get("/routes"); code != 200 || !strings.Contains(body, `"routes": 2`) {
		t.Fatalf("routes: %d %q", code, body)
	}
	if code, _ := get("/metrics"); code != 404 {
		t.Fatalf("metrics without a handler: %d", code)
	}
}
