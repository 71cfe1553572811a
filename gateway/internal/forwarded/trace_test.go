package forwarded

import "testing"

// The trace id of each propagation format Envoy's tracers read: W3C
// (source/extensions/tracers/opentelemetry/span_context_extractor.cc
// SpanContextExtractor::extractSpanContext: version-traceid-spanid-flags,
// all-zero ids invalid; Envoy also takes upper-case hex, which W3C
// forbids and envgate does not log) and B3 (source/extensions/tracers/zipkin/
// span_context_extractor.cc: b3 single first, then x-b3-traceid, 16 or 32
// hex digits).
func TestTraceID(t *testing.T) {
	const w3c = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, tc := range []struct {
		name string
		h    map[string]string
		want string
	}{
		{"traceparent", map[string]string{"traceparent": "00-" + w3c + "-00f067aa0ba902b7-01"}, w3c},
		{"traceparent wins over b3", map[string]string{"traceparent": "00-" + w3c + "-00f067aa0ba902b7-01", "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}, w3c},
		{"b3 single", map[string]string{"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"}, "80f198ee56343ba864fe8b2a57d3eff7"},
		{"b3 single, 64-bit id", map[string]string{"b3": "a3ce929d0e0e4736-e457b5a2e4d86bd1"}, "a3ce929d0e0e4736"},
		{"b3 multi", map[string]string{"x-b3-traceid": "463ac35c9f6413ad48485a3953bb6124", "x-b3-spanid": "a2fb4a1d1a96d312"}, "463ac35c9f6413ad48485a3953bb6124"},
		{"b3 sampling only", map[string]string{"b3": "0"}, ""},
		{"upper case is not W3C", map[string]string{"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}, ""},
		{"all zeros", map[string]string{"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, ""},
		{"log injection", map[string]string{"x-b3-traceid": "463ac35c9f6413ad\n{\"a\":1}"}, ""},
		{"none", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := TraceID(func(n string) string { return tc.h[n] }); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
