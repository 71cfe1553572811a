package forwarded

import "strings"

// TraceID is the trace id a request carries, for the access log: W3C
// traceparent's (version-traceid-parentid-flags), else B3 single's (b3:
// traceid-spanid[-sampled[-parentid]]), else B3 multi's x-b3-traceid; ""
// when none is well-formed. get returns a header's first value. Only
// lower-case hex of the lengths the formats allow is returned (32, or 16
// for B3), so a client cannot put anything else in a log line; an
// all-zero id is invalid in both formats.
func TraceID(get func(name string) string) string {
	if tp := get("traceparent"); len(tp) >= 55 && tp[2] == '-' && tp[35] == '-' {
		if id := tp[3:35]; validID(id) {
			return id
		}
	}
	if b3 := get("b3"); b3 != "" {
		id, _, _ := strings.Cut(b3, "-")
		if validID(id) {
			return id
		}
	}
	if id := get("x-b3-traceid"); validID(id) {
		return id
	}
	return ""
}

func validID(id string) bool {
	if len(id) != 32 && len(id) != 16 {
		return false
	}
	zero := true
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c == '0':
		case '1' <= c && c <= '9', 'a' <= c && c <= 'f':
			zero = false
		default:
			return false
		}
	}
	return !zero
}
