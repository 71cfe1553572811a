// Package hpackmemo puts a memo in front of an HPACK encoder: a field the
// encoder last wrote as a table index is written as those bytes again,
// without the encoder's table searches, for as long as the dynamic table
// has not changed.
//
// A proxy encodes the same fields on every call of a connection (:path,
// :authority, user-agent, env, x-forwarded-*; :status, content-type,
// grpc-status), each found in the encoder's tables by four map lookups of
// its name and value: golang.org/x/net/http2/hpack's searches were 4% of
// the gateway's CPU on unary gRPC calls.
//
// An index stays valid while no entry is added to the dynamic table or
// evicted from it, which happens only when a field is encoded with
// incremental indexing (its representation starts 01, RFC 7541 section
// 6.2.1) or the table's size changes (SetMaxDynamicTableSize*, and the
// update the encoder then writes, 001). The memo counts those events and
// an entry is used only in the count it was made in, so what it writes is
// byte for byte what the encoder would.
package hpackmemo

import (
	"hash/maphash"
	"strings"

	"golang.org/x/net/http2/hpack"
)

// Buffer is what the encoder writes into: the memo reads back what a
// field's encoding appended, and appends a remembered one.
type Buffer interface {
	Write(p []byte) (int, error)
	Len() int
	Bytes() []byte
}

// maxField bounds the name and value bytes an entry keeps (copied): the
// memo holds at most slots x maxField bytes of a connection's fields,
// whatever the peers send.
const maxField = 128

// Encoder is an hpack.Encoder with the memo. Like the encoder it belongs
// to one writer at a time.
type Encoder struct {
	enc *hpack.Encoder
	buf Buffer
	// gen counts the dynamic table's changes; an entry is valid in the
	// generation it was made in. 64 bits: it never wraps.
	gen   uint64
	slots int
	memo  []entry // made at the first field remembered
}

type entry struct {
	name, value string
	gen         uint64
	n           uint8
	b           [3]byte // an index up to 2^14 + 126 fits (RFC 7541 5.1)
}

// New returns an encoder writing to buf that remembers up to slots fields
// (a slot each, by a hash of the field: two fields sharing one take turns
// being encoded anew). A gRPC call's request block has some 8 fields
// encoded this way, a response's 3 to 5; each slot is 48 bytes, once the
// connection's first field is remembered.
func New(buf Buffer, slots int) *Encoder {
	return &Encoder{enc: hpack.NewEncoder(buf), buf: buf, gen: 1, slots: max(slots, 1)}
}

func (e *Encoder) slot(f hpack.HeaderField) *entry {
	return &e.memo[(maphash.String(seed, f.Name)+uint64(len(f.Value)))%uint64(e.slots)]
}

var seed = maphash.MakeSeed()

// WriteField encodes f as hpack.Encoder.WriteField does.
func (e *Encoder) WriteField(f hpack.HeaderField) {
	if f.Sensitive { // never indexed: no table to look in
		e.write(f)
		return
	}
	var slot *entry
	if e.memo != nil {
		slot = e.slot(f)
		if slot.gen == e.gen && slot.name == f.Name && slot.value == f.Value {
			_, _ = e.buf.Write(slot.b[:slot.n])
			return
		}
	}
	before := e.buf.Len()
	e.write(f)
	out := e.buf.Bytes()[before:]
	if len(out) == 0 {
		return
	}
	switch b := out[0]; {
	case b&0x80 != 0: // indexed (6.1), the table unchanged
		if len(out) > len(entry{}.b) || len(f.Name)+len(f.Value) > maxField {
			return
		}
		if e.memo == nil {
			e.memo = make([]entry, e.slots)
			slot = e.slot(f)
		}
		if slot.gen == e.gen {
			// Another field's, still valid: it stays, so two fields
			// sharing a slot cost no copies turn about.
			return
		}
		// Copies: an entry must not keep a peer's header block alive.
		*slot = entry{name: strings.Clone(f.Name), value: strings.Clone(f.Value), gen: e.gen, n: uint8(len(out))}
		copy(slot.b[:], out)
	case b&0xc0 == 0x40, b&0xe0 == 0x20:
		// Added to the table (6.2.1), or a table size update (6.3) went
		// first: indexes have moved.
		e.gen++
	}
}

func (e *Encoder) write(f hpack.HeaderField) {
	_ = e.enc.WriteField(f) // the buffers take every write
}

// SetMaxDynamicTableSizeLimit is hpack.Encoder's: it may evict entries.
func (e *Encoder) SetMaxDynamicTableSizeLimit(v uint32) {
	e.enc.SetMaxDynamicTableSizeLimit(v)
	e.gen++
}

// SetMaxDynamicTableSize is hpack.Encoder's: it may evict entries.
func (e *Encoder) SetMaxDynamicTableSize(v uint32) {
	e.enc.SetMaxDynamicTableSize(v)
	e.gen++
}
