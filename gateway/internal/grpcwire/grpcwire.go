// Package grpcwire is the gRPC over HTTP/2 wire format's value encodings
// (PROTOCOL-HTTP2.md), both ways: binary metadata, grpc-timeout and
// grpc-message, as grpc-go's transport writes and reads them. The
// upstream client (h2client) and the server side (grpcfront) share it.
//
// Leaf package: no imports of the project.
package grpcwire

import (
	"encoding/base64"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// IsBin reports whether a metadata key carries binary values (-bin).
func IsBin(k string) bool { return strings.HasSuffix(k, "-bin") }

// EncodeBin encodes a binary metadata value as grpc-go sends it: base64
// without padding.
func EncodeBin(v string) string { return base64.RawStdEncoding.EncodeToString([]byte(v)) }

// DecodeBin decodes a binary metadata value, padded or not (grpc-go
// decodeBinHeader).
func DecodeBin(v string) (string, error) {
	var b []byte
	var err error
	if len(v)%4 == 0 {
		b, err = base64.StdEncoding.DecodeString(v)
	} else {
		b, err = base64.RawStdEncoding.DecodeString(v)
	}
	return string(b), err
}

// EncodeTimeout writes d as a grpc-timeout value: at most eight digits and
// the finest unit that fits, rounded up so that the peer never gets more
// time than is left.
func EncodeTimeout(d time.Duration) string {
	if d <= 0 {
		return "0n"
	}
	const max = 100_000_000
	for _, u := range []struct {
		unit byte
		d    time.Duration
	}{{'n', time.Nanosecond}, {'u', time.Microsecond}, {'m', time.Millisecond}, {'S', time.Second}, {'M', time.Minute}} {
		if v := (d + u.d - 1) / u.d; v < max {
			return strconv.FormatInt(int64(v), 10) + string(u.unit)
		}
	}
	return strconv.FormatInt(int64((d+time.Hour-1)/time.Hour), 10) + "H"
}

// DecodeTimeout parses grpc-timeout (grpc-go internal/transport
// http_util.go decodeTimeout): up to 8 digits and a unit.
func DecodeTimeout(s string) (time.Duration, error) {
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

// EncodeMessage percent-encodes grpc-message (grpc-go encodeGrpcMessage):
// bytes outside printable ASCII, '%', and every byte of a non-ASCII
// character.
func EncodeMessage(msg string) string {
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

// DecodeMessage undoes the percent-encoding of grpc-message.
func DecodeMessage(msg string) string {
	if !strings.Contains(msg, "%") {
		return msg
	}
	var sb strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c == '%' && i+2 < len(msg) {
			if v, err := strconv.ParseUint(msg[i+1:i+3], 16, 8); err == nil {
				sb.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		sb.WriteByte(c)
	}
	return sb.String()
}
