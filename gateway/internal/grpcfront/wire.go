package grpcfront

import (
	"encoding/base64"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// decodeTimeout parses grpc-timeout (grpc-go internal/transport
// http_util.go decodeTimeout): up to 8 digits and a unit.
func decodeTimeout(s string) (time.Duration, error) {
	size := len(s)
	if size < 2 {
		return 0, fmt.Errorf("transport: timeout string is too short: %q", s)
	}
	if size > 9 {
		return 0, fmt.Errorf("transport: timeout string is too long: %q", s)
	}
	var unit time.Duration
	switch s[size-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, fmt.Errorf("transport: timeout unit is not recognized: %q", s)
	}
	t, err := strconv.ParseUint(s[:size-1], 10, 64)
	if err != nil {
		return 0, err
	}
	if unit == time.Hour && t > math.MaxInt64/uint64(time.Hour) {
		return time.Duration(math.MaxInt64), nil
	}
	return unit * time.Duration(t), nil
}

// decodeBin decodes a binary header's value, padded or not (grpc-go
// decodeBinHeader).
func decodeBin(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

// encodeBin encodes a binary header's value as grpc-go sends it.
func encodeBin(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// encodeMessage percent-encodes grpc-message (grpc-go encodeGrpcMessage):
// bytes outside printable ASCII, and '%', and every byte of a non-ASCII
// character.
func encodeMessage(msg string) string {
	clean := true
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c < ' ' || c > '~' || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return msg
	}
	var sb strings.Builder
	for len(msg) > 0 {
		r, size := utf8.DecodeRuneInString(msg)
		for _, b := range []byte(string(r)) {
			if size > 1 || b < ' ' || b > '~' || b == '%' {
				fmt.Fprintf(&sb, "%%%02X", b)
			} else {
				sb.WriteByte(b)
			}
		}
		msg = msg[size:]
	}
	return sb.String()
}
