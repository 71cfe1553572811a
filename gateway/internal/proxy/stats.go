package proxy

import (
	"context"

	"google.golang.org/grpc/stats"
)

// callState carries what the upstream connection learns about one call that
// gRPC's client stream does not expose: the compression of its responses.
type callState struct {
	// tagged is set when the connection has the stats handler, so the proxy
	// never waits for a report that cannot come.
	tagged  bool
	headers chan struct{} // closed once the response headers were seen
	comp    string
}

func newCallState() *callState { return &callState{headers: make(chan struct{})} }

// responseCompression waits for the stats handler to have seen the response
// headers (gRPC reports them right after it unblocks Header, so the wait is
// short) and returns their grpc-encoding.
func (s *callState) responseCompression() string {
	if !s.tagged {
		return ""
	}
	<-s.headers
	return s.comp
}

// StatsHandler is the upstream connections' stats handler: it records the
// compression of each call's responses so the proxy can answer with the same.
func StatsHandler() stats.Handler { return compressionRecorder{} }

type compressionRecorder struct{}

func (compressionRecorder) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	// Called in NewStream, before it returns.
	if st := attemptOf(ctx); st != nil {
		st.tagged = true
	}
	return ctx
}

func (compressionRecorder) HandleRPC(ctx context.Context, s stats.RPCStats) {
	h, ok := s.(*stats.InHeader)
	if !ok {
		return
	}
	if st := attemptOf(ctx); st != nil && h.Client {
		st.comp = h.Compression
		close(st.headers)
	}
}

// attemptOf returns the state of the call attempt whose stream ctx is.
func attemptOf(ctx context.Context) *callState {
	if c, ok := ctx.Value(callKey{}).(*call); ok {
		return c.attempt.Load()
	}
	return nil
}

func (compressionRecorder) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (compressionRecorder) HandleConn(context.Context, stats.ConnStats) {}
