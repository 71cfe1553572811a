package proxy

import (
	"context"
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/h2client"
)

// frame is one gRPC message carried as the bytes it arrived as. The proxy
// never parses it, so any payload, protobuf or not, goes through unchanged and
// its buffers go from the receiving transport to the sending one without a
// copy.
type frame struct {
	data mem.BufferSlice
	// compressed is the message's compressed flag: its bytes are
	// compressed in the stream's encoding and pass through so.
	compressed bool
	// mark puts the pass-through marker before the bytes when the frame
	// is sent to the client (see compress.go).
	mark bool
	// acct, when set, is the client connection a large response message
	// must make room in before the upstream client lets it in
	// (h2client.Reserver), waiting under ctx; reserved is what was
	// reserved for the message in hand, for the caller to correct.
	acct     connAccount
	ctx      context.Context
	reserved int
}

// Reserve is h2client.Reserver.
func (f *frame) Reserve(size int) error {
	if f.acct == nil {
		return nil
	}
	if err := f.acct.Reserve(f.ctx, size); err != nil {
		return status.FromContextError(err).Err()
	}
	f.reserved += size
	return nil
}

// WireCompressed and SetWireCompressed let the upstream client carry the
// frame's flag (h2client.Wire).
func (f *frame) WireCompressed() bool     { return f.compressed }
func (f *frame) SetWireCompressed(c bool) { f.compressed = c }

// free returns the frame's buffers to their pool when SendMsg did not take
// them.
func (f *frame) free() {
	f.data.Free()
	f.data = nil
}

// codec marshals frames as themselves and everything else (the gateway's own
// services, such as health) with the protobuf codec.
type codec struct {
	name     string
	fallback encoding.CodecV2
}

var _ encoding.CodecV2 = codec{}

func newCodec(name string) codec {
	return codec{name: name, fallback: encoding.GetCodecV2(proto.Name)}
}

// Marshal hands the frame's buffers to gRPC, which frees them once written.
func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return c.fallback.Marshal(v)
	}
	data := f.data
	f.data = nil
	if f.mark {
		f.mark = false
		data = append(mem.BufferSlice{markerBuf}, data...)
	}
	return data, nil
}

// Unmarshal keeps a reference to data: gRPC frees its own after this returns.
// A compressed request arrives behind the pass-through marker: the frame
// keeps its wire bytes and flag; a local service gets it inflated.
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	data, marked := unmark(data)
	f, ok := v.(*frame)
	if !ok {
		if marked {
			data.Ref() // Decompress frees it; gRPC frees its own
			plain, err := h2client.Decompress("gzip", data, localMaxMessage)
			if err != nil {
				return err
			}
			defer plain.Free()
			data = plain
		}
		return c.fallback.Unmarshal(data, v)
	}
	if f.data != nil {
		return fmt.Errorf("proxy: frame reused before it was sent")
	}
	data.Ref()
	f.data = data
	f.compressed = marked
	return nil
}

// localMaxMessage bounds a request to the gateway's own services (health)
// once inflated.
const localMaxMessage = 64 << 10

func (c codec) Name() string { return c.name }
