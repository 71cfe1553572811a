// Command httpfloor is the least work an HTTP proxy written as Go programs
// usually are (a goroutine per client connection on Go's netpoller) can do
// per request, with none of a gateway's work: no routing, header handling,
// retries, timeouts, logging or metrics. make bench runs it beside envgate,
// nginx and HAProxy so that envgate's CPU per request can be read against
// what Go's runtime costs at the least, measured in the same run.
//
//   - HTTP/1.1 (every client connection): one goroutine reads a request
//     head, writes it unchanged to its own upstream connection, reads the
//     answer's head and its Content-Length body, and writes them back; the
//     shape of envgate's HTTP/1.1 fast path, as few system calls as it
//     makes, and nothing else.
//   - HTTP/2 (h2c prior knowledge): Go's HTTP/2 server (net/http) with a
//     handler that answers from memory what the backend would (the
//     helloserver's body and content type), without any upstream: less
//     than any proxy built on that server, as envgate's REST-over-HTTP/2
//     path is, can cost.
//
// It is not a usable proxy: one backend, Content-Length answers only, no
// limits on what it reads.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19080", "address to serve on")
	backend := flag.String("backend", "127.0.0.1:19053", "the HTTP/1.1 backend")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	h2 := &http.Server{Handler: memory{}, Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	h2l := &chanListener{Listener: l, conns: make(chan net.Conn)}
	go func() { log.Fatal(h2.Serve(h2l)) }()
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c, *backend, h2l)
	}
}

const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// serve relays one client connection's HTTP/1.1 requests to one upstream
// connection of its own, or hands an HTTP/2 connection to Go's server.
func serve(c net.Conn, backend string, h2l *chanListener) {
	cr := bufio.NewReaderSize(c, 4096)
	if b, err := cr.Peek(len(preface)); err == nil && string(b) == preface {
		h2l.conns <- &peekedConn{Conn: c, r: cr}
		return
	}
	defer c.Close()
	u, err := dial(backend)
	if err != nil {
		return
	}
	defer u.c.Close()
	cw := bufio.NewWriterSize(c, 4096)
	for {
		if err := u.exchange(cr, cw); err != nil {
			return
		}
		if err := cw.Flush(); err != nil {
			return
		}
	}
}

// upConn is an upstream connection and its buffers.
type upConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func dial(addr string) (*upConn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &upConn{c: c, r: bufio.NewReaderSize(c, 4096), w: bufio.NewWriterSize(c, 4096)}, nil
}

// exchange copies one request head from src upstream and its answer to dst.
func (u *upConn) exchange(src *bufio.Reader, dst *bufio.Writer) error {
	if _, err := copyHead(u.w, src); err != nil {
		return err
	}
	if err := u.w.Flush(); err != nil {
		return err
	}
	n, err := copyHead(dst, u.r)
	if err != nil {
		return err
	}
	_, err = io.CopyN(dst, u.r, n)
	return err
}

// copyHead copies a head up to its empty line and returns its
// Content-Length (0 when absent).
func copyHead(w *bufio.Writer, r *bufio.Reader) (int64, error) {
	var n int64
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		w.Write(line)
		if len(line) <= 2 {
			return n, nil
		}
		if name, v, ok := bytes.Cut(line, []byte{':'}); ok && bytes.EqualFold(name, []byte("content-length")) {
			if n, err = strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64); err != nil {
				return 0, fmt.Errorf("content-length: %w", err)
			}
		}
	}
}

// memory answers every request with the helloserver's answer to env1.
type memory struct{}

var hello = []byte("Hello World! ServerEnv:env1, ClientEnv:env1\n")

func (memory) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h["Content-Type"] = []string{"text/plain; charset=utf-8"}
	h["Content-Length"] = []string{strconv.Itoa(len(hello))}
	w.Write(hello)
}

// chanListener hands the HTTP/2 connections serve found to Go's server.
type chanListener struct {
	net.Listener
	conns chan net.Conn
}

func (l *chanListener) Accept() (net.Conn, error) { return <-l.conns, nil }

// peekedConn is a connection whose first bytes sit in r.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }
