package h2client

// Flow control, both ways.
//
// Sending: the upstream grants a connection window and a window per
// stream (SETTINGS_INITIAL_WINDOW_SIZE, then WINDOW_UPDATE); a DATA frame
// takes from both. sendFlow is the connection's, each stream keeps its
// own sendWin; both are guarded by conn.mu.
//
// Receiving: this client grants streamWindow per stream and connWindow
// for the connection. The connection window is given back as data arrives
// (the reader does it), so only the stream windows bound what a connection
// holds for callers that read slowly; a stream's window is given back as
// its caller reads (recvWindow), except that a message larger than the
// window is let in whole.

// Windows this client grants.
const (
	streamWindow = 256 << 10
	connWindow   = 16 << 20
)

// sendFlow is the connection-level send window and the initial stream
// window the upstream set; under conn.mu.
type sendFlow struct {
	win     int64
	initial int64
}

// newSendFlow is HTTP/2's state before the upstream's SETTINGS.
func newSendFlow() sendFlow { return sendFlow{win: 65535, initial: 65535} }

// reserveLocked takes up to want bytes from both s's window and the
// connection's and returns how many; 0 means wait for a WINDOW_UPDATE.
func (c *conn) reserveLocked(s *stream, want int) int {
	n := min(int64(want), s.sendWin, c.flow.win)
	if n <= 0 {
		return 0
	}
	s.sendWin -= n
	c.flow.win -= n
	return int(n)
}

// onWindowUpdateLocked adds a WINDOW_UPDATE's increment to the window it
// names (0: the connection's).
func (c *conn) onWindowUpdateLocked(id, inc uint32) {
	if id == 0 {
		c.flow.win += int64(inc)
	} else if s := c.streams[id]; s != nil {
		s.sendWin += int64(inc)
	}
	c.broadcastLocked()
}

// onInitialWindowLocked applies a new SETTINGS_INITIAL_WINDOW_SIZE to
// every open stream, as RFC 9113 6.9.2 says.
func (c *conn) onInitialWindowLocked(v uint32) {
	delta := int64(v) - c.flow.initial
	c.flow.initial = int64(v)
	for _, s := range c.streams {
		s.sendWin += delta
	}
	c.broadcastLocked()
}

// recvWindow accounts one window this client grants: what the upstream
// may still send, and what was consumed and not yet given back.
type recvWindow struct {
	left    int64 // bytes the upstream may still send
	pending int64 // consumed, not yet granted back
}

// take accounts n bytes received; false means the upstream sent more than
// it was granted.
func (w *recvWindow) take(n int64) bool {
	w.left -= n
	return w.left >= 0
}

// consumed accounts n bytes consumed and returns the increment to grant
// back: nothing until a quarter of size is owed, so WINDOW_UPDATEs are few.
func (w *recvWindow) consumed(n, size int64) int64 {
	w.pending += n
	if w.pending < size/4 {
		return 0
	}
	g := w.pending
	w.left += g
	w.pending = 0
	return g
}

// grow lets in need more bytes than the window has left (a message larger
// than the window) and returns the increment to grant.
func (w *recvWindow) grow(need int64) int64 {
	g := need - w.left + w.pending
	w.left += g
	w.pending = 0
	return g
}
