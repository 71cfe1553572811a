// Package countconn counts the writes that reach a connection, for tests
// that assert how many system calls an answer or a request took.
package countconn

import (
	"net"
	"sync/atomic"
)

// Conn is a connection that adds one to Writes for each Write.
type Conn struct {
	net.Conn
	Writes *atomic.Int64
}

func (c Conn) Write(p []byte) (int, error) {
	c.Writes.Add(1)
	return c.Conn.Write(p)
}
