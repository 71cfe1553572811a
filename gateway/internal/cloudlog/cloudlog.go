// Package cloudlog writes log records in Cloud Logging's structured
// format (https://cloud.google.com/logging/docs/structured-logging): one
// JSON object per line with "severity" and "message", which GKE's logging
// agent lifts into the LogEntry, and for the access log's lines an
// "httpRequest" (LogEntry.HttpRequest) and the trace, so Logs Explorer
// shows them as requests and links them to Cloud Trace.
package cloudlog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
)

// NewHandler writes JSON lines to w. project, when not empty, is the Google
// Cloud project whose Cloud Trace the trace ids belong to.
func NewHandler(w io.Writer, opts *slog.HandlerOptions, project string) slog.Handler {
	o := slog.HandlerOptions{}
	if opts != nil {
		o = *opts
	}
	next := o.ReplaceAttr
	o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 {
			switch a.Key {
			case slog.LevelKey:
				return slog.String("severity", severity(a.Value.Any().(slog.Level)))
			case slog.MessageKey:
				a.Key = "message"
			}
		}
		if next != nil {
			return next(groups, a)
		}
		return a
	}
	return &handler{next: slog.NewJSONHandler(w, &o), project: project}
}

type handler struct {
	next    slog.Handler
	project string
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }
func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{next: h.next.WithGroup(name), project: h.project}
}
func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &handler{next: h.next.WithAttrs(as), project: h.project}
}

// Handle adds httpRequest to the access log's lines ("call": a gRPC call,
// "request": an HTTP request); other lines pass as they are.
func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message != "call" && r.Message != "request" {
		return h.next.Handle(ctx, r)
	}
	var req struct {
		method, url, protocol, userAgent, remote, server, traceID string
		status                                                    int64
		in, out                                                   int64
		latencyMS                                                 float64
	}
	grpc := r.Message == "call"
	r.Attrs(func(a slog.Attr) bool {
		v := a.Value
		switch a.Key {
		case "method":
			if grpc {
				req.url = v.String() // the path of a gRPC call is its method
			} else {
				req.method = v.String()
			}
		case "path":
			req.url = v.String()
		case "protocol":
			req.protocol = v.String()
		case "status":
			req.status = v.Int64()
		case "user_agent":
			req.userAgent = v.String()
		case "peer":
			req.remote = v.String()
		case "upstream":
			req.server = v.String()
		case "bytes_in":
			req.in = v.Int64()
		case "bytes_out":
			req.out = v.Int64()
		case "duration_ms":
			req.latencyMS = v.Float64()
		case "trace_id":
			req.traceID = v.String()
		}
		return true
	})
	if grpc {
		// gRPC's status is in the trailers; the HTTP exchange is a POST
		// answered 200, as the load balancer's own log shows it.
		req.method, req.status, req.protocol = "POST", 200, "HTTP/2.0"
	}
	attrs := []any{
		slog.String("requestMethod", req.method),
		slog.String("requestUrl", req.url),
		slog.Int64("status", req.status),
		// int64 fields are strings in the LogEntry's JSON form.
		slog.String("requestSize", strconv.FormatInt(req.in, 10)),
		slog.String("responseSize", strconv.FormatInt(req.out, 10)),
		slog.String("userAgent", req.userAgent),
		slog.String("remoteIp", hostOf(req.remote)),
		slog.String("latency", fmt.Sprintf("%.6fs", req.latencyMS/1000)),
		slog.String("protocol", req.protocol),
	}
	if req.server != "" {
		attrs = append(attrs, slog.String("serverIp", hostOf(req.server)))
	}
	r = r.Clone() // the caller may hold the record it passed
	r.AddAttrs(slog.Group("httpRequest", attrs...))
	if req.traceID != "" && h.project != "" {
		r.AddAttrs(slog.String("logging.googleapis.com/trace", "projects/"+h.project+"/traces/"+req.traceID))
	}
	return h.next.Handle(ctx, r)
}

func hostOf(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// severity is Cloud Logging's LogSeverity name of l.
func severity(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "DEBUG"
	case l < slog.LevelWarn:
		return "INFO"
	case l < slog.LevelError:
		return "WARNING"
	}
	return "ERROR"
}
