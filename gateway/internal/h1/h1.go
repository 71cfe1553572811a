// Package h1 reads and writes the HTTP/1.1 messages of the gateway's fast
// path: request and response heads parsed into fields without a map or a
// string per field, and chunked bodies relayed frame by frame.
//
// The request parser accepts a strict subset of RFC 9112 and says "not
// mine" for everything else (HTTP/1.0, obs-fold, bare LF, Transfer-Encoding,
// Expect, Upgrade, a Connection header naming other headers, absolute-form
// targets, duplicate Host or Content-Length, more than MaxFields fields):
// the caller hands such a connection to a full HTTP server, which answers
// or rejects it as it always did. So the fast path never has to be lenient,
// and can never frame a request differently from the server behind it.
package h1

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"unsafe"
)

// Field is one header field.
type Field struct{ Name, Value string }

// MaxFields bounds the fields of a head the fast path takes.
const MaxFields = 128

// Request is a parsed request head.
type Request struct {
	Method string
	Target string // origin-form: starts with "/"
	Host   string
	// Fields are every field but Host, names lower-cased (as Envoy's
	// HTTP/1 codec writes them), values without surrounding whitespace.
	Fields []Field
	// ContentLength is the body's length, 0 when there is none;
	// HasLength says a Content-Length field gave it.
	ContentLength int64
	HasLength     bool
	// Close is set by "Connection: close".
	Close bool
}

// Get is the first value of the field named name (lower case), "" if none.
func (r *Request) Get(name string) string {
	for _, f := range r.Fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// HeadEnd is the length of the head at the start of b, through its empty
// line, and whether every line of it ends in CRLF; 0 when b holds no whole
// head yet.
func HeadEnd(b []byte) (n int, crlf bool) {
	// One pass over the line ends: the head ends at the first LF that is
	// followed by LF or CRLF.
	crlf = true
	for k := 0; ; {
		i := bytes.IndexByte(b[k:], '\n')
		if i < 0 {
			return 0, false
		}
		k += i
		if k == 0 || b[k-1] != '\r' {
			crlf = false
		}
		switch {
		case k+1 < len(b) && b[k+1] == '\n':
			return k + 2, false
		case k+2 < len(b) && b[k+1] == '\r' && b[k+2] == '\n':
			return k + 3, crlf
		case k+2 >= len(b) && (k+1 == len(b) || b[k+1] == '\r'):
			return 0, false // the end may be in what has not come yet
		}
		k++
	}
}

// ParseRequest parses head (a whole head with CRLF line ends, as HeadEnd
// found it) into r, reusing r.Fields; false says the head is not in the
// subset this package takes. The strings share one copy of head.
func ParseRequest(head []byte, r *Request) bool {
	*r = Request{Fields: r.Fields[:0], ContentLength: 0}
	b := make([]byte, len(head))
	copy(b, head)
	// The strings share b: each is taken (view) after scanField lowered
	// what it covers, and no byte is written after that.
	le := bytes.Index(b, []byte("\r\n"))
	if le < 0 {
		return false
	}
	line := view(b, 0, le)
	next := le + 2
	sp1 := indexByte(line, ' ')
	if sp1 <= 0 {
		return false
	}
	r.Method = line[:sp1]
	if !isToken(r.Method) {
		return false
	}
	line = line[sp1+1:]
	sp2 := indexByte(line, ' ')
	if sp2 <= 0 || line[sp2+1:] != "HTTP/1.1" {
		return false
	}
	r.Target = line[:sp2]
	if r.Target[0] != '/' || !isTarget(r.Target) {
		return false
	}
	hosts, lengths := 0, 0
	for {
		i := next
		if i+2 > len(b) {
			return false // no empty line
		}
		if i+2 == len(b) && b[i] == '\r' && b[i+1] == '\n' {
			break // the empty line, which ends the head
		}
		nameEnd, vStart, vEnd, n, ok := scanField(b, i, true)
		if !ok {
			return false
		}
		next = n
		name, value := view(b, i, nameEnd), view(b, vStart, vEnd)
		switch name {
		case "host":
			hosts++
			r.Host = value
			if !validHost(value) {
				return false
			}
			continue
		case "content-length":
			lengths++
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 || value[0] == '+' {
				return false
			}
			r.ContentLength = n
		case "connection":
			switch {
			case equalFold(value, "close"):
				r.Close = true
			case equalFold(value, "keep-alive"):
			default:
				return false
			}
		case "transfer-encoding", "expect", "upgrade", "te", "trailer", "http2-settings":
			return false
		}
		if len(r.Fields) == MaxFields {
			return false
		}
		r.Fields = append(r.Fields, Field{name, value})
	}
	r.HasLength = lengths == 1
	return hosts == 1 && lengths <= 1
}

// Response is a parsed response head.
type Response struct {
	Status int
	Reason string
	// HTTP10 is an HTTP/1.0 answer (closed after its body).
	HTTP10 bool
	// Fields are every field but the framing ones, as received.
	Fields []Field
	// ContentLength is the body's length, -1 when unsized.
	ContentLength int64
	Chunked       bool
	// Close is set by "Connection: close" (or HTTP/1.0 without
	// "Connection: keep-alive").
	Close bool
	// Conn holds the names the Connection field lists (hop-by-hop, not
	// forwarded), lower-cased.
	Conn []string
}

// ErrMalformed is a response head this package cannot frame.
var ErrMalformed = errors.New("malformed HTTP/1.1 response head")

// ParseResponse parses head into r, reusing r's slices.
func ParseResponse(head []byte, r *Response) error {
	*r = Response{Fields: r.Fields[:0], Conn: r.Conn[:0], ContentLength: -1}
	b := make([]byte, len(head))
	copy(b, head)
	s := unsafe.String(unsafe.SliceData(b), len(b))
	line, _, _ := cut(s, "\r\n")
	next := len(line) + 2
	switch {
	case len(line) >= 12 && line[:9] == "HTTP/1.1 ":
	case len(line) >= 12 && line[:9] == "HTTP/1.0 ":
		r.HTTP10, r.Close = true, true
	default:
		return ErrMalformed
	}
	code, err := strconv.Atoi(line[9:12])
	if err != nil || code < 100 || line[9] == '+' || len(line) > 12 && line[12] != ' ' {
		return ErrMalformed
	}
	r.Status = code
	if len(line) > 13 {
		r.Reason = line[13:]
	}
	keepAlive := false
	for {
		i := next
		if i+2 > len(b) {
			return ErrMalformed
		}
		if i+2 == len(b) && b[i] == '\r' && b[i+1] == '\n' {
			break
		}
		nameEnd, vStart, vEnd, n, ok := scanField(b, i, false)
		if !ok {
			return ErrMalformed // includes obs-fold
		}
		next = n
		name, value := s[i:nameEnd], s[vStart:vEnd]
		switch {
		case equalFold(name, "content-length"):
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 || value[0] == '+' || r.ContentLength >= 0 && r.ContentLength != n {
				return ErrMalformed
			}
			r.ContentLength = n
			continue
		case equalFold(name, "transfer-encoding"):
			if !equalFold(value, "chunked") || r.Chunked {
				return ErrMalformed
			}
			r.Chunked = true
			continue
		case equalFold(name, "connection"):
			for _, tok := range splitComma(value) {
				switch {
				case equalFold(tok, "close"):
					r.Close = true
				case equalFold(tok, "keep-alive"):
					keepAlive = true
				default:
					r.Conn = append(r.Conn, lower(tok))
				}
			}
			continue
		}
		if len(r.Fields) == MaxFields {
			return ErrMalformed
		}
		r.Fields = append(r.Fields, Field{name, value})
	}
	if r.HTTP10 && keepAlive && !r.Chunked {
		r.Close = false
	}
	if r.Chunked {
		// RFC 9112 section 6.3: Transfer-Encoding overrides
		// Content-Length, and such a connection is not reused.
		r.ContentLength = -1
		if r.HTTP10 {
			return ErrMalformed
		}
	}
	return nil
}

// view is b[from:to] as a string sharing b, whose bytes must not change
// after.
func view(b []byte, from, to int) string {
	if from == to {
		return ""
	}
	return unsafe.String(&b[from], to-from)
}

// scanField reads the field line that starts at b[i], in one pass: a
// token name (lower-cased in b when lower), a colon, the value with its
// surrounding whitespace left out, CRLF. It returns where the name ends,
// where the value starts and ends, and where the next line starts; ok is
// false for any other line (obs-fold starts with whitespace, which is not
// a token character; a CTL in the value, a bare CR or LF included).
func scanField(b []byte, i int, lower bool) (nameEnd, vStart, vEnd, next int, ok bool) {
	j := i
	if lower {
		for j < len(b) && tchar[b[j]] {
			b[j] = lowerTable[b[j]]
			j++
		}
	} else {
		for j < len(b) && tchar[b[j]] {
			j++
		}
	}
	if j == i || j == len(b) || b[j] != ':' {
		return 0, 0, 0, 0, false
	}
	nameEnd = j
	j++
	for j < len(b) && (b[j] == ' ' || b[j] == '\t') {
		j++
	}
	vStart = j
	for j < len(b) && fieldByte[b[j]] {
		j++
	}
	if j+1 >= len(b) || b[j] != '\r' || b[j+1] != '\n' {
		return 0, 0, 0, 0, false
	}
	vEnd = j
	for vEnd > vStart && (b[vEnd-1] == ' ' || b[vEnd-1] == '\t') {
		vEnd--
	}
	return nameEnd, vStart, vEnd, j + 2, true
}

// fieldByte says which bytes field-content may hold (validValue).
var fieldByte = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= ' ' && c != 0x7f || c == '\t'
	}
	return t
}()

var lowerTable = func() (t [256]byte) {
	for c := range 256 {
		t[c] = byte(c)
		if 'A' <= c && c <= 'Z' {
			t[c] = byte(c + 'a' - 'A')
		}
	}
	return t
}()

func field(line string) (name, value string, ok bool) {
	i := indexByte(line, ':')
	if i <= 0 || !isToken(line[:i]) {
		return "", "", false // includes obs-fold: a line starting with SP
	}
	value = trimOWS(line[i+1:])
	return line[:i], value, validValue(value)
}

func cut(s, sep string) (before, after string, found bool) { return strings.Cut(s, sep) }

func indexByte(s string, c byte) int { return strings.IndexByte(s, c) }

func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// isToken reports whether s is an RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tchar[s[i]] {
			return false
		}
	}
	return true
}

var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validValue: field-content is VCHAR, SP, HTAB and obs-text; no CTL.
func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if !fieldByte[s[i]] {
			return false
		}
	}
	return true
}

// isTarget: an origin-form target is visible ASCII, each percent sign
// followed by two hex digits (net/http's server refuses any other escape
// with 400, so the full server answers it).
func isTarget(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c <= ' ' || c >= 0x7f || c == '#':
			return false
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// validHost accepts what a Host field may carry (RFC 3986 reg-name,
// IP-literal and port characters); anything else goes to the full server.
func validHost(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !tchar[c] && c != ':' && c != '[' && c != ']' && c != '(' && c != ')' && c != ',' && c != ';' && c != '=' {
			return false
		}
	}
	return true
}

func equalFold(s, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		a, b := s[i], t[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// EqualFold is ASCII case-insensitive equality, as header names compare.
func EqualFold(s, t string) bool { return equalFold(s, t) }

func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

func splitComma(s string) []string {
	var out []string
	for s != "" {
		tok, rest, _ := cut(s, ",")
		if tok = trimOWS(tok); tok != "" {
			out = append(out, tok)
		}
		s = rest
	}
	return out
}
