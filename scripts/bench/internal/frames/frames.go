// Package frames is the pass-through codec of the bench's grpc-go
// baselines: messages travel as the bytes they arrived as, never parsed.
package frames

import "google.golang.org/grpc/mem"

// Frame is one message's bytes.
type Frame struct{ Data mem.BufferSlice }

// Codec marshals and unmarshals Frames only; it takes the "proto" name so
// that every call through the server uses it.
type Codec struct{}

// Marshal hands the frame's buffers to gRPC, which frees them once written.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	f := v.(*Frame)
	data := f.Data
	f.Data = nil
	return data, nil
}

// Unmarshal keeps a reference to data: gRPC frees its own after this returns.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	data.Ref()
	v.(*Frame).Data = data
	return nil
}

func (Codec) Name() string { return "proto" }

// Bytes is a frame's data holding b (not copied).
func Bytes(b []byte) mem.BufferSlice { return mem.BufferSlice{mem.SliceBuffer(b)} }
