package proxy

import (
	"encoding/hex"
	"math/rand/v2"
)

// newRequestID is a random UUID version 4, the form Envoy's default request
// ID extension writes into x-request-id (source/extensions/request_id/uuid).
// math/rand/v2's generator is ChaCha8, seeded from the system: not
// guessable, and much cheaper per call than crypto/rand.
func newRequestID() string {
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
