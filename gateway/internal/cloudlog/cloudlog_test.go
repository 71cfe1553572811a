package cloudlog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"
)

// The fields Cloud Logging's agent lifts into the LogEntry
// (https://cloud.google.com/logging/docs/structured-logging, "Special
// JSON fields in messages"; LogEntry.HttpRequest in
// google/logging/type/http_request.proto).
func TestCloudLoggingFormat(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}, "my-project"))
	log.Warn("upstream slow", "env", "env1")
	log.Info("call", "env", "env1", "method", "/echo.EchoService/Call", "code", "OK", "user_agent", "grpcurl/1.9",
		"peer", "10.0.0.9:41000", "upstream", "10.4.0.7:50051", "bytes_in", int64(5), "bytes_out", int64(40),
		"duration_ms", 12.5, "trace_id", "4bf92f3577b34da6a3ce929d0e0e4736")
	log.Info("request", "protocol", "HTTP/1.1", "method", "GET", "path", "/api/v1/x?a=1", "status", 404,
		"peer", "[::1]:5000", "bytes_in", int64(0), "bytes_out", int64(28), "duration_ms", 0.25)

	var lines []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 3 {
		t.Fatalf("%d lines", len(lines))
	}
	if l := lines[0]; l["severity"] != "WARNING" || l["message"] != "upstream slow" || l["msg"] != nil || l["level"] != nil || l["httpRequest"] != nil {
		t.Errorf("plain line: %v", l)
	}
	want := map[string]any{
		"requestMethod": "POST", "requestUrl": "/echo.EchoService/Call", "status": 200.0,
		"requestSize": "5", "responseSize": "40", "userAgent": "grpcurl/1.9", "remoteIp": "10.0.0.9",
		"serverIp": "10.4.0.7", "latency": "0.012500s", "protocol": "HTTP/2.0",
	}
	if got := lines[1]["httpRequest"]; !reflect.DeepEqual(got, want) {
		t.Errorf("gRPC call's httpRequest:\n got %v\nwant %v", got, want)
	}
	if got := lines[1]["logging.googleapis.com/trace"]; got != "projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace %v", got)
	}
	if lines[1]["env"] != "env1" || lines[1]["severity"] != "INFO" {
		t.Errorf("the access log's own fields must stay: %v", lines[1])
	}
	want = map[string]any{
		"requestMethod": "GET", "requestUrl": "/api/v1/x?a=1", "status": 404.0,
		"requestSize": "0", "responseSize": "28", "userAgent": "", "remoteIp": "::1",
		"latency": "0.000250s", "protocol": "HTTP/1.1",
	}
	if got := lines[2]["httpRequest"]; !reflect.DeepEqual(got, want) {
		t.Errorf("HTTP request's httpRequest:\n got %v\nwant %v", got, want)
	}
	if _, ok := lines[2]["logging.googleapis.com/trace"]; ok {
		t.Error("a trace without a trace id")
	}
}
