// Command h2floor is an experiment, not a proxy: grpc-go's server in front,
// as in envgate, and behind it a minimal hand-written HTTP/2 client instead
// of grpc.ClientConn, to measure what the upstream half of a call costs
// without grpc-go's client. It handles unary calls only, one connection, no
// deadlines, cancellation, compression, GOAWAY or errors beyond exiting;
// see docs/bench.md for what it measured and how to run it.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"flag"
	"io"
	"log"
	"net"
	"strconv"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"

	"github.com/envgate/envgate/scripts/bench/internal/frames"
	"google.golang.org/grpc/status"
)

type result struct {
	hdr     metadata.MD
	trailer metadata.MD
	body    []byte
}

type stream struct {
	res  result
	gotH bool
	done chan struct{}
}

type conn struct {
	wmu     sync.Mutex
	bw      *bufio.Writer
	fr      *http2.Framer
	hbuf    bytes.Buffer
	enc     *hpack.Encoder
	nextID  uint32
	mu      sync.Mutex
	streams map[uint32]*stream
}

func dial(addr string) *conn {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	c := &conn{bw: bufio.NewWriterSize(nc, 32<<10), nextID: 1, streams: map[uint32]*stream{}}
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.bw.WriteString(http2.ClientPreface)
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(nc, 32<<10))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	c.fr.WriteWindowUpdate(0, 1<<30)
	c.bw.Flush()
	go c.read()
	return c
}

func (c *conn) read() {
	recvd := 0
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			log.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				c.fr.WriteSettingsAck()
				c.bw.Flush()
				c.wmu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				c.fr.WritePing(true, f.Data)
				c.bw.Flush()
				c.wmu.Unlock()
			}
		case *http2.MetaHeadersFrame:
			c.mu.Lock()
			s := c.streams[f.StreamID]
			c.mu.Unlock()
			md := metadata.MD{}
			for _, hf := range f.Fields {
				if hf.Name[0] != ':' {
					md[hf.Name] = append(md[hf.Name], hf.Value)
				}
			}
			if !s.gotH && !f.StreamEnded() {
				s.gotH = true
				s.res.hdr = md
			} else {
				s.res.trailer = md
			}
			if f.StreamEnded() {
				c.mu.Lock()
				delete(c.streams, f.StreamID)
				c.mu.Unlock()
				close(s.done)
			}
		case *http2.DataFrame:
			c.mu.Lock()
			s := c.streams[f.StreamID]
			c.mu.Unlock()
			s.res.body = append(s.res.body, f.Data()...)
			recvd += len(f.Data())
			if recvd > 1<<29 {
				c.wmu.Lock()
				c.fr.WriteWindowUpdate(0, uint32(recvd))
				c.bw.Flush()
				c.wmu.Unlock()
				recvd = 0
			}
			if f.StreamEnded() {
				c.mu.Lock()
				delete(c.streams, f.StreamID)
				c.mu.Unlock()
				close(s.done)
			}
		}
	}
}

func (c *conn) unary(path, authority string, md metadata.MD, msg []byte) *stream {
	s := &stream{done: make(chan struct{})}
	c.wmu.Lock()
	id := c.nextID
	c.nextID += 2
	c.mu.Lock()
	c.streams[id] = s
	c.mu.Unlock()
	c.hbuf.Reset()
	w := func(k, v string) { c.enc.WriteField(hpack.HeaderField{Name: k, Value: v}) }
	w(":method", "POST")
	w(":scheme", "http")
	w(":path", path)
	w(":authority", authority)
	w("content-type", "application/grpc")
	w("te", "trailers")
	for k, vs := range md {
		if k[0] == ':' || k == "content-type" || k == "te" || k == "user-agent" {
			continue
		}
		for _, v := range vs {
			w(k, v)
		}
	}
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true})
	var pfx [5]byte
	binary.BigEndian.PutUint32(pfx[1:], uint32(len(msg)))
	c.fr.WriteData(id, true, append(pfx[:], msg...))
	c.bw.Flush()
	c.wmu.Unlock()
	return s
}

func main() {
	listen := flag.String("listen", "127.0.0.1:19080", "")
	backend := flag.String("backend", "127.0.0.1:19051", "")
	flag.Parse()
	up := dial(*backend)
	handler := func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		md, _ := metadata.FromIncomingContext(ss.Context())
		var f frames.Frame
		if err := ss.RecvMsg(&f); err != nil {
			return err
		}
		msg := f.Data.Materialize()
		f.Data.Free()
		f.Data = nil
		if err := ss.RecvMsg(&f); err != io.EOF {
			return status.Error(codes.Unimplemented, "unary only")
		}
		s := up.unary(method, "backend", md, msg)
		<-s.done
		if s.res.hdr != nil {
			ss.SendHeader(s.res.hdr)
		}
		b := s.res.body
		for len(b) >= 5 {
			n := int(binary.BigEndian.Uint32(b[1:5]))
			out := frames.Frame{Data: mem.BufferSlice{mem.SliceBuffer(b[5 : 5+n])}}
			if err := ss.SendMsg(&out); err != nil {
				return err
			}
			b = b[5+n:]
		}
		tr := s.res.trailer
		code, _ := strconv.Atoi(first(tr["grpc-status"]))
		msgs := first(tr["grpc-message"])
		delete(tr, "grpc-status")
		delete(tr, "grpc-message")
		ss.SetTrailer(tr)
		if code != 0 {
			return status.Error(codes.Code(code), msgs)
		}
		return nil
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(handler), grpc.ForceServerCodecV2(frames.Codec{}), grpc.NumStreamWorkers(64))
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(lis))
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
