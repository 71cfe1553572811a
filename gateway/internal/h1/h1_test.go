package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

func parse(t *testing.T, head string) (*Request, bool) {
	t.Helper()
	b := []byte(head)
	n, crlf := HeadEnd(b)
	if n != len(b) {
		t.Fatalf("HeadEnd(%q) = %d, want %d", head, n, len(b))
	}
	var r Request
	ok := crlf && ParseRequest(b, &r)
	return &r, ok
}

// TestParseRequestTakesOnlyItsSubset: what the fast path takes, and every
// kind of head it leaves to the full server (RFC 9112 sections 2.2, 3, 5,
// 6, 9.6; RFC 9110 section 10.1.1 for Expect, 7.8 for Upgrade).
func TestParseRequestTakesOnlyItsSubset(t *testing.T) {
	r, ok := parse(t, "GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nEnv: env1\r\nX-Multi: 1\r\nx-multi:  2 \r\nContent-Length: 12\r\nConnection: close\r\n\r\n")
	if !ok {
		t.Fatal("a plain request was refused")
	}
	if r.Method != "GET" || r.Target != "/a/b?c=d" || r.Host != "example.com:8080" || r.ContentLength != 12 || !r.HasLength || !r.Close {
		t.Fatalf("parsed %+v", r)
	}
	want := []Field{{"env", "env1"}, {"x-multi", "1"}, {"x-multi", "2"}, {"content-length", "12"}, {"connection", "close"}}
	if len(r.Fields) != len(want) {
		t.Fatalf("fields %q, want %q", r.Fields, want)
	}
	for i := range want {
		if r.Fields[i] != want[i] {
			t.Fatalf("fields %q, want %q", r.Fields, want)
		}
	}
	if r.Get("env") != "env1" || r.Get("absent") != "" {
		t.Fatalf("Get: %q", r.Get("env"))
	}

	for _, head := range []string{
		"GET / HTTP/1.0\r\nHost: a\r\n\r\n",                                            // HTTP/1.0: keep-alive rules differ
		"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",                                    // absolute-form
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",                                        // asterisk-form
		"GET / HTTP/1.1\r\n\r\n",                                                       // no Host
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                                 // two Hosts
		"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",                                          // a Host no URI allows
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", // duplicate length
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-secret\r\n\r\n", // names a hop-by-hop field
		"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n  folded\r\n\r\n", // obs-fold
		"GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",            // space before the colon
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",        // NUL
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",          // bare CR
		"GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n",           // a line starting with CR, before the empty one
		"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a%0 HTTP/1.1\r\nHost: a\r\n\r\n",  // an escape net/http refuses (found by FuzzParseRequest)
		"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", // the same
		"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
		"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", // a leading empty line
	} {
		b := []byte(head)
		n, crlf := HeadEnd(b)
		var r Request
		if n > 0 && crlf && ParseRequest(b[:n], &r) {
			t.Errorf("took %q: %+v", head, r)
		}
	}
	// Bare LF line ends are not CRLF.
	if _, crlf := HeadEnd([]byte("GET / HTTP/1.1\nHost: a\n\n")); crlf {
		t.Error("bare LF head reported as CRLF")
	}
	if _, crlf := HeadEnd([]byte("GET / HTTP/1.1\r\nHost: a\n\r\n")); crlf {
		t.Error("mixed line ends reported as CRLF")
	}
	var many strings.Builder
	many.WriteString("GET / HTTP/1.1\r\nHost: a\r\n")
	for i := range MaxFields + 1 {
		many.WriteString("X-" + strconv.Itoa(i) + ": v\r\n")
	}
	many.WriteString("\r\n")
	if _, ok := parse(t, many.String()); ok {
		t.Error("took more than MaxFields fields")
	}
}

// FuzzParseRequest: whatever the fast path takes, net/http's server reads
// the same way (method, target, host, length, every field's values), so
// the fast path can never frame a request differently from the server it
// hands the rest to.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x?y HTTP/1.1\r\nHost: a:1\r\nContent-Length: 3\r\nX-A: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nenv:\tenv1 \r\n\r\n",
		"GET / HTTP/1.1\r\nhost: [::1]:80\r\nX: \x80\xff\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, crlf := HeadEnd(b)
		if n == 0 || !crlf {
			return
		}
		var r Request
		if !ParseRequest(b[:n], &r) {
			return
		}
		hr, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:n])))
		if err != nil {
			t.Fatalf("took %q, which net/http refuses: %v", b[:n], err)
		}
		if hr.Method != r.Method || hr.RequestURI != r.Target || hr.Host != r.Host || hr.ContentLength != r.ContentLength && !(hr.ContentLength == 0 && !r.HasLength) {
			t.Fatalf("%q: net/http read %s %s host %q length %d; fast path %+v", b[:n], hr.Method, hr.RequestURI, hr.Host, hr.ContentLength, r)
		}
		if hr.Close != r.Close {
			t.Fatalf("%q: close %v, net/http %v", b[:n], r.Close, hr.Close)
		}
		got := map[string][]string{}
		for _, f := range r.Fields {
			got[http.CanonicalHeaderKey(f.Name)] = append(got[http.CanonicalHeaderKey(f.Name)], f.Value)
		}
		for k, v := range hr.Header {
			if strings.Join(v, "\x00") != strings.Join(got[k], "\x00") {
				t.Fatalf("%q: field %s %q, net/http %q", b[:n], k, got[k], v)
			}
		}
		if len(got) != len(hr.Header) {
			t.Fatalf("%q: fields %q, net/http %q", b[:n], got, hr.Header)
		}
	})
}

// TestParseResponseFraming follows RFC 9112 section 6.3: Transfer-Encoding
// over Content-Length, differing lengths refused, HTTP/1.0 closes, the
// Connection field's options are hop-by-hop.
func TestParseResponseFraming(t *testing.T) {
	for _, tc := range []struct {
		head    string
		err     bool
		length  int64
		chunked bool
		close   bool
		conn    []string
		fields  int
	}{
		{head: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\n", length: 5, fields: 1},
		{head: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", length: 5},
		{head: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", err: true},
		{head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", length: -1, chunked: true},
		{head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", err: true},
		{head: "HTTP/1.1 200 OK\r\n\r\n", length: -1},
		{head: "HTTP/1.1 204\r\n\r\n", length: -1},
		{head: "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\n\r\n", length: -1, close: true, conn: []string{"x-hop"}},
		{head: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", length: 1, close: true},
		{head: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n", length: 1},
		{head: "HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n", err: true},
		{head: "HTTP/1.1 2000 OK\r\n\r\n", err: true},
		{head: "HTTP/2 200 OK\r\n\r\n", err: true},
		{head: "HTTP/1.1 200 OK\r\nX\r\n\r\n", err: true},
	} {
		var r Response
		err := ParseResponse([]byte(tc.head), &r)
		if (err != nil) != tc.err {
			t.Errorf("%q: error %v", tc.head, err)
			continue
		}
		if err != nil {
			continue
		}
		if r.ContentLength != tc.length || r.Chunked != tc.chunked || r.Close != tc.close || len(r.Fields) != tc.fields || strings.Join(r.Conn, ",") != strings.Join(tc.conn, ",") {
			t.Errorf("%q: %+v", tc.head, r)
		}
	}
}

// TestCopyChunkedRelaysFrames: chunks pass with their extensions dropped,
// trailers follow; bad framing is an error, never a guess.
func TestCopyChunkedRelaysFrames(t *testing.T) {
	in := "5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nGrpc-Status: 0\r\n\r\nNEXT"
	r := bufio.NewReader(strings.NewReader(in))
	var out bytes.Buffer
	w := bufio.NewWriter(&out)
	n, err := CopyChunked(w, r, make([]byte, 8))
	w.Flush()
	if err != nil || n != 31 {
		t.Fatalf("n %d, %v", n, err)
	}
	if want := "5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nGrpc-Status: 0\r\n\r\n"; out.String() != want {
		t.Fatalf("relayed %q, want %q", out.String(), want)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "NEXT" {
		t.Fatalf("read past the body: left %q", rest)
	}
	for _, bad := range []string{
		"x\r\n", "5\r\nhel", "5\r\nhelloXY", "\r\n", "-1\r\n", "fffffffffffffffff\r\n", "5\nhello\r\n0\r\n\r\n",
		"0\r\nbad trailer\r\n\r\n", strings.Repeat("0", 5000) + "\r\n",
	} {
		w := bufio.NewWriter(io.Discard)
		if _, err := CopyChunked(w, bufio.NewReader(strings.NewReader(bad)), make([]byte, 8)); err == nil {
			t.Errorf("%q relayed without error", bad)
		}
	}
	// The relayed body reads back as what was sent.
	var src bytes.Buffer
	cw := httputil.NewChunkedWriter(&src)
	cw.Write(bytes.Repeat([]byte("z"), 100000))
	cw.Close()
	src.WriteString("\r\n")
	out.Reset()
	w = bufio.NewWriter(&out)
	if n, err := CopyChunked(w, bufio.NewReader(&src), make([]byte, 4096)); err != nil || n != 100000 {
		t.Fatalf("n %d, %v", n, err)
	}
	w.Flush()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"+out.String())), nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err != nil || len(b) != 100000 {
		t.Fatalf("read back %d bytes, %v", len(b), err)
	}
}

// TestReadHeadGathersLargeHeads: a head longer than the reader's buffer
// is gathered, bounded.
func TestReadHeadGathersLargeHeads(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: a\r\nCookie: " + strings.Repeat("c", 10000) + "\r\n\r\n"
	r := bufio.NewReaderSize(strings.NewReader(head+"BODY"), 4096)
	var scratch []byte
	got, copied, crlf, err := ReadHead(r, 60<<10, &scratch)
	if err != nil || !copied || !crlf || string(got) != head {
		t.Fatalf("copied %v crlf %v err %v, %d bytes", copied, crlf, err, len(got))
	}
	if rest, _ := io.ReadAll(r); string(rest) != "BODY" {
		t.Fatalf("left %q", rest)
	}
	r = bufio.NewReaderSize(strings.NewReader(head), 4096)
	if _, _, _, err := ReadHead(r, 8<<10, &scratch); err != ErrHeadTooLarge {
		t.Fatalf("over the bound: %v", err)
	}
	r = bufio.NewReaderSize(strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT"), 4096)
	got, copied, _, err = ReadHead(r, 60<<10, &scratch)
	if err != nil || copied || string(got) != "GET / HTTP/1.1\r\nHost: a\r\n\r\n" {
		t.Fatalf("small head: %q copied %v err %v", got, copied, err)
	}
}

// The heads of make bench's HTTP rows: h2load's GET and the helloserver's
// answer (Go's net/http).
var (
	benchRequest  = []byte("GET / HTTP/1.1\r\nHost: 127.0.0.1:19080\r\nUser-Agent: h2load nghttp2/1.52.0\r\nAccept: */*\r\nEnv: env1\r\n\r\n")
	benchResponse = []byte("HTTP/1.1 200 OK\r\nContent-Length: 40\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Wed, 02 Dec 2026 04:12:47 GMT\r\n\r\n")
)

func BenchmarkParseRequest(b *testing.B) {
	var r Request
	b.ReportAllocs()
	for b.Loop() {
		if !ParseRequest(benchRequest, &r) {
			b.Fatal("refused")
		}
	}
}

func BenchmarkParseResponse(b *testing.B) {
	var r Response
	b.ReportAllocs()
	for b.Loop() {
		if err := ParseResponse(benchResponse, &r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHeadEnd(b *testing.B) {
	for b.Loop() {
		HeadEnd(benchRequest)
	}
}

// headEndByIndex is HeadEnd as it was first written: two searches of the
// whole buffer, then a check of every line end. HeadEnd now makes one pass
// over the line ends and must agree with it on every input.
func headEndByIndex(b []byte) (n int, crlf bool) {
	i := bytes.Index(b, []byte("\n\r\n"))
	j := bytes.Index(b, []byte("\n\n"))
	switch {
	case i < 0 && j < 0:
		return 0, false
	case j >= 0 && (i < 0 || j < i):
		return j + 2, false
	}
	n = i + 3
	for k := 0; k < n; k++ {
		if b[k] == '\n' && (k == 0 || b[k-1] != '\r') {
			return n, false
		}
	}
	return n, true
}

func FuzzHeadEnd(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\n\r", "\r\n\r\n", "\n\r\n", "\n\n",
		"GET / HTTP/1.1\nHost: a\n\n", "GET / HTTP/1.1\r\nHost: a\n\r\n", "a\r\nb\n\nc\r\n\r\n", "\r\n\r",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, crlf := HeadEnd(b)
		wn, wcrlf := headEndByIndex(b)
		if n != wn || n > 0 && crlf != wcrlf {
			t.Fatalf("HeadEnd(%q) = %d, %v; want %d, %v", b, n, crlf, wn, wcrlf)
		}
	})
}

// TestChunkedReaderDechunks: the data of each chunk and then the trailer
// fields, nothing past the body; bad framing is an error, never data.
func TestChunkedReaderDechunks(t *testing.T) {
	in := "5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nGrpc-Status: 0\r\nX-Sum: 31\r\n\r\nNEXT"
	r := bufio.NewReader(strings.NewReader(in))
	cr := NewChunkedReader(r)
	b, err := io.ReadAll(iotest.OneByteReader(cr))
	if err != nil || string(b) != "helloabcdefghijklmnopqrstuvwxyz" {
		t.Fatalf("read %q, %v", b, err)
	}
	if want := []Field{{"Grpc-Status", "0"}, {"X-Sum", "31"}}; !slices.Equal(cr.Trailers, want) {
		t.Fatalf("trailers %v, want %v", cr.Trailers, want)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "NEXT" {
		t.Fatalf("read past the body: left %q", rest)
	}
	for _, bad := range []string{
		"x\r\n", "5\r\nhel", "5\r\nhelloXY", "\r\n", "-1\r\n", "fffffffffffffffff\r\n", "5\nhello\r\n0\r\n\r\n",
		"0\r\nbad trailer\r\n\r\n", "0\r\nX: 1\r\n", strings.Repeat("0", 5000) + "\r\n",
		"0\r\n" + strings.Repeat("X: 1\r\n", MaxFields+1) + "\r\n",
	} {
		if _, err := io.ReadAll(NewChunkedReader(bufio.NewReader(strings.NewReader(bad)))); err == nil {
			t.Errorf("%q read without error", bad)
		}
	}
	// What net/http's chunked writer sends reads back whole.
	var src bytes.Buffer
	cw := httputil.NewChunkedWriter(&src)
	want := bytes.Repeat([]byte("0123456789"), 10000)
	for b := want; len(b) > 0; b = b[min(len(b), 777):] {
		cw.Write(b[:min(len(b), 777)])
	}
	cw.Close()
	src.WriteString("\r\n")
	if got, err := io.ReadAll(NewChunkedReader(bufio.NewReader(&src))); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
}
