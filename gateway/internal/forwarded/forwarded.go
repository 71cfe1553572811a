// Package forwarded makes the request headers a gateway at the edge adds
// for its upstream, as Envoy's connection manager does
// (source/common/http/conn_manager_utility.cc mutateRequestHeaders): the
// client's address appended to x-forwarded-for, within a bound, and a new
// x-request-id. Both fronts, gRPC and HTTP, use it.
package forwarded

import (
	"encoding/hex"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
)

// ClientIP is a client's address without its port, as x-forwarded-for and
// x-envoy-external-address carry it: a TCP address's IP, or the host of
// any other address's string (the string itself if it has no port).
func ClientIP(addr net.Addr) string {
	if a, ok := addr.(*net.TCPAddr); ok {
		return a.IP.String()
	}
	s := addr.String()
	if host, _, err := net.SplitHostPort(s); err == nil {
		return host
	}
	return s
}

// RequestID is a random UUID version 4, the form Envoy's default request
// ID extension writes into x-request-id (source/extensions/request_id/uuid).
// math/rand/v2's generator is ChaCha8, seeded from the system: not
// guessable, and much cheaper per call than crypto/rand.
func RequestID() string {
	var b [16]byte
	a, c := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i], b[8+i] = byte(a>>(8*i)), byte(c>>(8*i))
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// MaxForwardedFor bounds the x-forwarded-for the upstream gets: the
// client's own entries are kept from the right (the ones nearest the
// gateway, the only ones a hop vouched for) while they fit, then the
// client's address is appended.
const MaxForwardedFor = 1024

// For appends ip to the client's x-forwarded-for entries, keeping
// only the rightmost entries that fit in MaxForwardedFor bytes.
func For(prior []string, ip string) string {
	all := strings.Join(prior, ",")
	budget := MaxForwardedFor - len(ip)
	var kept []string
	for size := 0; all != ""; {
		i := strings.LastIndexByte(all, ',')
		entry := strings.TrimSpace(all[i+1:])
		all = all[:max(i, 0)]
		if entry == "" {
			continue
		}
		if size += len(entry) + len(", "); size > budget {
			break
		}
		kept = append(kept, entry)
	}
	slices.Reverse(kept)
	return strings.Join(append(kept, ip), ", ")
}
