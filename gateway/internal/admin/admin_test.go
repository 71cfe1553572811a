package admin

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(h http.Handler, path string) (int, string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestReadiness(t *testing.T) {
	var err error = errors.New("discovery has not synced")
	h := Health(func() error { return err })
	if code, body := get(h, "/healthz/ready"); code != 503 || !strings.Contains(body, "discovery has not synced") {
		t.Fatalf("not ready: %d %q", code, body)
	}
	if code, _ := get(h, "/healthz/live"); code != 200 {
		t.Fatalf("live: %d", code)
	}
	err = nil
	if code, _ := get(h, "/healthz/ready"); code != 200 {
		t.Fatalf("ready: %d", code)
	}
	// The health side shows nothing else.
	for _, p := range []string{"/routes", "/metrics", "/explain"} {
		if code, _ := get(h, p); code != 404 {
			t.Fatalf("health listener serves %s: %d", p, code)
		}
	}
}

func TestDebug(t *testing.T) {
	h := Debug{Routes: func() any { return map[string]int{"routes": 2} }}.Handler()
	if code, body := get(h, "/routes"); code != 200 || !strings.Contains(body, `"routes": 2`) {
		t.Fatalf("routes: %d %q", code, body)
	}
	if code, _ := get(h, "/metrics"); code != 404 {
		t.Fatalf("metrics without a handler: %d", code)
	}
	if code, _ := get(h, "/healthz/ready"); code != 404 {
		t.Fatalf("debug listener serves health: %d", code)
	}
}
