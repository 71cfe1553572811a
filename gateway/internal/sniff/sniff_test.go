package sniff

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// clientStart is what an HTTP/2 client sends before its first request
// ends: the preface, its SETTINGS, a WINDOW_UPDATE and the request's
// HEADERS with the given content-type ("" for none).
func clientStart(t *testing.T, contentType string, ackFirst bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteString(Preface)
	fr := http2.NewFramer(&buf, nil)
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if ackFirst {
		if err := fr.WriteSettingsAck(); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WriteWindowUpdate(0, 1<<20); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/x"}, {Name: ":authority", Value: "a"}} {
		_ = enc.WriteField(f)
	}
	if contentType != "" {
		_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: contentType})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// classify runs Classify on one end of a pipe, the client writing start
// on the other, and returns the decision and what the server reads first.
func classify(t *testing.T, start []byte, o Options) (Server, []byte, []byte) {
	t.Helper()
	server, client := tcpPair(t)
	defer client.Close()
	defer server.Close()
	fromServer := make(chan []byte, 1)
	go func() {
		_, _ = client.Write(start)
		b := make([]byte, len(settingsFrame(interim))+len(settingsAck))
		_ = client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, _ := io.ReadFull(client, b)
		fromServer <- b[:n]
	}()
	c, s, err := Classify(server, o)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(start))
	n, _ := io.ReadAtLeast(c, got, 1)
	for n < len(start) {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		m, err := c.Read(got[n:])
		n += m
		if err != nil {
			break
		}
	}
	return s, got[:n], <-fromServer
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name        string
		contentType string
		want        Server
	}{
		{"grpc", "application/grpc", GRPC},
		{"grpc+proto", "application/grpc+proto", GRPC},
		{"grpc-web is not gRPC over HTTP/2", "application/grpc-web", HTTP2},
		{"json", "application/json", HTTP2},
		{"no content-type", "", HTTP2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := clientStart(t, tc.contentType, false)
			got, read, wrote := classify(t, start, Options{Timeout: time.Second, Settings: interim})
			if got != tc.want {
				t.Fatalf("server %v, want %v", got, tc.want)
			}
			if !bytes.Equal(read, start) {
				t.Fatalf("the server reads %d bytes that differ from the %d the client sent", len(read), len(start))
			}
			if want := append(settingsFrame(interim), settingsAck...); !bytes.Equal(wrote, want) {
				t.Fatalf("the sniffer wrote %x, want its SETTINGS and the acknowledgement of the client's: %x", wrote, want)
			}
		})
	}
}

var interim = []Setting{{ID: uint16(http2.SettingMaxConcurrentStreams), Val: 100}, {ID: uint16(http2.SettingInitialWindowSize), Val: 256 << 10}}

// The server's acknowledgement of the client's first SETTINGS, which the
// sniffer already sent, does not reach the client; what follows does.
func TestServerAckRemoved(t *testing.T) {
	start := clientStart(t, "application/grpc", false)
	server, client := tcpPair(t)
	defer client.Close()
	defer server.Close()
	go func() { _, _ = client.Write(start) }()
	c, s, err := Classify(server, Options{Timeout: time.Second})
	if err != nil || s != GRPC {
		t.Fatal(s, err)
	}
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
	_ = fr.WriteSettingsAck()
	_ = fr.WritePing(true, [8]byte{7})
	b := out.Bytes()
	for i := range b { // byte by byte: the filter holds a split header
		if _, err := c.Write(b[i : i+1]); err != nil {
			t.Fatal(err)
		}
	}
	want := append(append(append(settingsFrame(nil), settingsAck...), b[:15]...), b[24:]...)
	if err := readExactly(client, want); err != nil {
		t.Fatal(err)
	}
}

// A server's SETTINGS equal to the sniffer's are dropped: the client has
// them already.
func TestServerSettingsEqualToInterimDropped(t *testing.T) {
	start := clientStart(t, "application/grpc", false)
	server, client := tcpPair(t)
	defer client.Close()
	defer server.Close()
	go func() { _, _ = client.Write(start) }()
	c, s, err := Classify(server, Options{Timeout: time.Second, Settings: interim})
	if err != nil || s != GRPC {
		t.Fatal(s, err)
	}
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 256 << 10}, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100})
	_ = fr.WriteWindowUpdate(0, 1000)
	_ = fr.WriteSettingsAck()
	_ = fr.WritePing(true, [8]byte{7})
	b := out.Bytes()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	// SETTINGS (21 bytes) and the acknowledgement (9) are gone.
	want := append(append(append(settingsFrame(interim), settingsAck...), b[21:21+13]...), b[21+13+9:]...)
	if err := readExactly(client, want); err != nil {
		t.Fatal(err)
	}
}

func readExactly(c net.Conn, want []byte) error {
	got := make([]byte, len(want))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("client read %x, want %x", got, want)
	}
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _ := c.Read(make([]byte, 1)); n > 0 {
		return fmt.Errorf("more than %d bytes", len(want))
	}
	return nil
}

// The client's acknowledgement of the sniffer's SETTINGS is not seen by
// the HTTP server, which counts acknowledgements of what it sent.
func TestClassifyRemovesTheAckForHTTP(t *testing.T) {
	start := clientStart(t, "application/json", true)
	got, read, _ := classify(t, start, Options{Timeout: time.Second})
	if got != HTTP2 {
		t.Fatalf("server %v", got)
	}
	if bytes.Contains(read, settingsAck) {
		t.Fatal("the acknowledgement reached the server")
	}
	if len(read) != len(start)-len(settingsAck) {
		t.Fatalf("read %d bytes, want %d", len(read), len(start)-len(settingsAck))
	}
}

func TestClassifyHTTP1(t *testing.T) {
	start := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	got, read, wrote := classify(t, start, Options{Timeout: time.Second})
	if got != HTTP1 || !bytes.Equal(read, start) || len(wrote) != 0 {
		t.Fatalf("server %v, read %q, wrote %x", got, read, wrote)
	}
}

// A connection that sends nothing but its preface and SETTINGS (a client
// waiting before its first request) goes to the HTTP server, which serves
// gRPC too, when the wait ends.
func TestClassifyIdleHTTP2GoesToHTTP(t *testing.T) {
	var buf bytes.Buffer
	buf.WriteString(Preface)
	_ = http2.NewFramer(&buf, nil).WriteSettings()
	got, read, _ := classify(t, buf.Bytes(), Options{Timeout: 5 * time.Second, FirstRequest: 100 * time.Millisecond})
	if got != HTTP2 || !bytes.Equal(read, buf.Bytes()) {
		t.Fatalf("server %v, read %x", got, read)
	}
}

// The filter finds the acknowledgement however the reads split the frames.
func TestAckFilterSplits(t *testing.T) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	_ = fr.WriteWindowUpdate(0, 100)
	_ = fr.WriteData(1, false, []byte("settings ack inside data: \x00\x00\x00\x04\x01\x00\x00\x00\x00"))
	_ = fr.WriteSettingsAck()
	_ = fr.WriteSettingsAck() // the server's own: kept
	_ = fr.WritePing(false, [8]byte{1})
	in := buf.Bytes()
	want := append(append([]byte(nil), in[:len(in)-2*9-17]...), in[len(in)-9-17:]...)
	for size := 1; size <= len(in); size++ {
		var f ackFilter
		var out []byte
		for i := 0; i < len(in); i += size {
			out = f.filter(out, in[i:min(i+size, len(in))])
		}
		if !bytes.Equal(out, want) {
			t.Fatalf("reads of %d bytes: got %x, want %x", size, out, want)
		}
	}
}

// tcpPair is a connected pair of loopback TCP connections: unlike
// net.Pipe, writes are buffered, as a client's are.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return server, client
}

// Go's HTTP/2 server writes one acknowledgement for the SETTINGS frames
// it reads before it could write one (net/http h2_bundle.go
// serverConn.processSettings: needToSendSettingsAck is a bool). When the
// client's SETTINGS after its request are read before the acknowledgement
// of the merged SETTINGS went out, that one acknowledgement answers both,
// and reaches the client (h2spec 6.9.2 failed through envgate for it,
// waiting for an acknowledgement that was removed).
func TestCoalescedAcknowledgementReachesTheClient(t *testing.T) {
	c, client, fr, out := secondSettingsThenRequest(t)
	// The client's next SETTINGS; the server reads it with the rest
	// before it writes its one acknowledgement.
	out.Reset()
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
	if _, err := client.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(Preface))); err != nil {
		t.Fatal(err)
	}
	sf := http2.NewFramer(nil, c)
	for settings := 0; settings < 2; {
		f, err := sf.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			settings++ // the merged frame, then the later one
		}
	}
	if _, err := c.Write(settingsAck); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, len(settingsAck))
	_ = client.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(client, ack); err != nil || !bytes.Equal(ack, settingsAck) {
		t.Fatalf("the acknowledgement of the later SETTINGS: %x, %v", ack, err)
	}
}

// secondSettingsThenRequest has a client send two SETTINGS, check that
// the sniffer acknowledges each before any request, then send a GET: it
// returns the connection the HTTP server gets, the client's end, and the
// client's framer writing into out.
func secondSettingsThenRequest(t *testing.T) (*Conn, net.Conn, *http2.Framer, *bytes.Buffer) {
	t.Helper()
	server, client := tcpPair(t)
	t.Cleanup(func() { client.Close(); server.Close() })
	type result struct {
		c   *Conn
		s   Server
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, s, err := Classify(server, Options{Timeout: 10 * time.Second, FirstRequest: 10 * time.Second, Settings: interim})
		done <- result{c, s, err}
	}()
	out := new(bytes.Buffer)
	out.WriteString(Preface)
	fr := http2.NewFramer(out, nil)
	_ = fr.WriteSettings()
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	if _, err := client.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	// The sniffer's SETTINGS, then an acknowledgement for each of ours.
	want := append(settingsFrame(interim), append(append([]byte{}, settingsAck...), settingsAck...)...)
	got := make([]byte, len(want))
	_ = client.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := io.ReadFull(client, got); err != nil {
		t.Fatalf("read %x (%d bytes) before the first request: %v", got[:n], n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x, want %x", got, want)
	}
	// The request: a plain GET goes to the HTTP server.
	out.Reset()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "a"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
	if _, err := client.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.s != HTTP2 {
		t.Fatalf("server %v, %v", r.s, r.err)
	}
	return r.c, client, fr, out
}

// A client that sends a second SETTINGS and waits for its acknowledgement
// before its first request (h2spec 6.9.2 does) gets it at once, not when
// the sniffer gives up waiting for the request (FirstRequest); the server
// it goes to then has its acknowledgement of the merged SETTINGS removed,
// and acknowledges what comes after.
func TestSecondSettingsAcknowledgedBeforeTheFirstRequest(t *testing.T) {
	c, client, _, _ := secondSettingsThenRequest(t)
	// The server's acknowledgement of the merged SETTINGS is removed; a
	// later one goes through.
	if _, err := c.Write(append(append([]byte{}, settingsAck...), settingsAck...)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, len(settingsAck))
	if _, err := io.ReadFull(client, ack); err != nil || !bytes.Equal(ack, settingsAck) {
		t.Fatalf("after the request: %x, %v; want one acknowledgement", ack, err)
	}
	_ = client.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _ := client.Read(ack); n != 0 {
		t.Fatalf("a second acknowledgement reached the client: %x", ack[:n])
	}
}

// A frame before the first request that a server must answer with an
// error goes to gRPC's server at once, which answers it, instead of
// waiting out Options.FirstRequest (h2spec sends such frames alone and
// waits two seconds for the answer).
func TestClassifyMalformedFlowFramesGoToGRPCAtOnce(t *testing.T) {
	frame := func(typ byte, stream uint32, payload ...byte) []byte {
		n := len(payload)
		return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, 0, byte(stream >> 24), byte(stream >> 16), byte(stream >> 8), byte(stream)}, payload...)
	}
	for _, tc := range []struct {
		name   string
		frames [][]byte
	}{
		{"WINDOW_UPDATE of 0 on the connection", [][]byte{frame(frameWindowUpdate, 0, 0, 0, 0, 0)}},
		{"WINDOW_UPDATE on a stream before any", [][]byte{frame(frameWindowUpdate, 1, 0, 0, 1, 0)}},
		{"WINDOW_UPDATE of a wrong length", [][]byte{frame(frameWindowUpdate, 0, 0, 0, 1)}},
		{"connection window past 2^31-1", [][]byte{frame(frameWindowUpdate, 0, 0x7f, 0xff, 0xff, 0xff)}},
		{"PRIORITY on stream 0", [][]byte{frame(framePriority, 0, 0, 0, 0, 1, 16)}},
		{"PRIORITY depending on itself", [][]byte{frame(framePriority, 3, 0, 0, 0, 3, 16)}},
		{"PRIORITY of a wrong length", [][]byte{frame(framePriority, 3, 0, 0)}},
		{"SETTINGS_ENABLE_PUSH of 2", [][]byte{frame(frameSettings, 0, 0, 2, 0, 0, 0, 2)}},
		{"SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1", [][]byte{frame(frameSettings, 0, 0, 4, 0x80, 0, 0, 0)}},
		{"SETTINGS_MAX_FRAME_SIZE below 16384", [][]byte{frame(frameSettings, 0, 0, 5, 0, 0, 0x3f, 0xff)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			buf.WriteString(Preface)
			_ = http2.NewFramer(&buf, nil).WriteSettings()
			for _, f := range tc.frames {
				buf.Write(f)
			}
			start := time.Now()
			got, _, _ := classify(t, buf.Bytes(), Options{Timeout: 10 * time.Second, FirstRequest: 3 * time.Second, Settings: interim})
			if got != GRPC || time.Since(start) > 2*time.Second {
				t.Fatalf("server %v after %v, want gRPC's at once", got, time.Since(start))
			}
		})
	}
}

// Options.FirstRequest may be long (the gateway waits as long as a
// connection may idle); closing the Mux ends the waits of the connections
// still being sniffed, so that Run returns.
func TestMuxCloseEndsTheWaitForAFirstRequest(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(lis, Options{Timeout: 10 * time.Second, FirstRequest: time.Hour, Settings: interim}, nil)
	ran := make(chan error, 1)
	go func() { ran <- m.Run() }()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var buf bytes.Buffer
	buf.WriteString(Preface)
	_ = http2.NewFramer(&buf, nil).WriteSettings()
	if _, err := client.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	// The sniffer's SETTINGS and acknowledgement: it is waiting now.
	b := make([]byte, len(settingsFrame(interim))+len(settingsAck))
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, b); err != nil {
		t.Fatal(err)
	}
	// The servers stop, then the Mux, as the gateway stops them.
	for _, s := range []Server{GRPC, HTTP, HTTP1, HTTP2} {
		_ = m.Listener(s).Close()
	}
	_ = m.Close()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still waits for the first request of a connection after Close")
	}
	if _, err := client.Read(b); err == nil {
		t.Fatal("the connection is still open")
	}
}
