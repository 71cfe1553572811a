//go:build !linux

package rawio

import "net"

// Wrap returns c: elsewhere than on Linux connections are net's.
func Wrap(c net.Conn) net.Conn { return c }

// Listener returns l.
func Listener(l net.Listener) net.Listener { return l }
