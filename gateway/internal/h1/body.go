package h1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ReadHead returns the next head from r. When it fits in r's buffer it is
// a slice of it, valid until r is read again, and still to be discarded
// from r; else (copied) it was gathered into *scratch, at most limit bytes,
// and is consumed. crlf is false when a line ended in a bare LF.
func ReadHead(r *bufio.Reader, limit int, scratch *[]byte) (head []byte, copied, crlf bool, err error) {
	for {
		b, _ := r.Peek(r.Buffered())
		if n, ok := HeadEnd(b); n > 0 {
			return b[:n], false, ok, nil
		}
		if r.Buffered() == r.Size() {
			break
		}
		if _, err := r.Peek(r.Buffered() + 1); err != nil {
			return nil, false, false, err
		}
	}
	// Larger than the buffer: gather it, bounded.
	*scratch = (*scratch)[:0]
	for {
		b, _ := r.Peek(r.Buffered())
		// A head's end may straddle what was gathered and what follows.
		from := max(len(*scratch)-2, 0)
		*scratch = append(*scratch, b...)
		if n, ok := HeadEnd((*scratch)[from:]); n > 0 {
			n += from
			extra := len(*scratch) - n
			*scratch = (*scratch)[:n]
			_, _ = r.Discard(len(b) - extra)
			if n > limit {
				return nil, true, false, ErrHeadTooLarge
			}
			return *scratch, true, ok, nil
		}
		_, _ = r.Discard(len(b))
		if len(*scratch) > limit {
			return nil, true, false, ErrHeadTooLarge
		}
		if _, err := r.Peek(1); err != nil {
			return nil, true, false, err
		}
	}
}

// ErrHeadTooLarge is a head longer than ReadHead's bound.
var ErrHeadTooLarge = errors.New("head too large")

// maxChunkLine bounds a chunk-size line (with its extensions) and each
// trailer line; maxTrailers the trailer section.
const (
	maxChunkLine = 4 << 10
	maxTrailers  = 16 << 10
)

// CopyChunked relays a chunked body from r to w, chunk by chunk, without
// chunk extensions; its trailer fields follow the last chunk. It returns
// the data bytes relayed. The framing is checked as it is read, so what w
// gets is well framed whatever r sends.
func CopyChunked(w *bufio.Writer, r *bufio.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		line, err := readLine(r, maxChunkLine)
		if err != nil {
			return n, err
		}
		if i := indexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		line = trimOWS(line)
		size, err := strconv.ParseUint(line, 16, 63)
		if err != nil || line == "" {
			return n, fmt.Errorf("bad chunk size %q", truncate(line, 32))
		}
		if size == 0 {
			break
		}
		fmt.Fprintf(w, "%x\r\n", size)
		m, err := io.CopyBuffer(writerOnly{w}, io.LimitReader(r, int64(size)), buf)
		n += m
		if err != nil {
			return n, err
		}
		if m < int64(size) {
			return n, io.ErrUnexpectedEOF
		}
		if crlf, err := readLine(r, 2); err != nil || crlf != "" {
			return n, errors.New("chunk data not followed by CRLF")
		}
		if _, err := w.WriteString("\r\n"); err != nil {
			return n, err
		}
		// Each chunk goes out as it came: a stream stays a stream.
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return n, err
			}
		}
	}
	_, _ = w.WriteString("0\r\n")
	total := 0
	for {
		line, err := readLine(r, maxChunkLine)
		if err != nil {
			return n, err
		}
		if line == "" {
			break
		}
		total += len(line)
		if _, _, ok := field(line); !ok || total > maxTrailers {
			return n, errors.New("bad trailer section")
		}
		_, _ = w.WriteString(line)
		_, _ = w.WriteString("\r\n")
	}
	_, err := w.WriteString("\r\n")
	return n, err
}

// WriteChunked sends what r gives until EOF as chunks, then the last
// chunk: an unsized body to an HTTP/1.1 client.
func WriteChunked(w *bufio.Writer, r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, err := r.Read(buf)
		if m > 0 {
			n += int64(m)
			fmt.Fprintf(w, "%x\r\n", m)
			_, _ = w.Write(buf[:m])
			_, _ = w.WriteString("\r\n")
			if ferr := w.Flush(); ferr != nil {
				return n, ferr
			}
		}
		if err == io.EOF {
			_, err = w.WriteString("0\r\n\r\n")
			return n, err
		}
		if err != nil {
			return n, err
		}
	}
}

// writerOnly hides bufio.Writer's ReadFrom, which would read until EOF.
type writerOnly struct{ io.Writer }

// readLine reads one CRLF-terminated line of at most max bytes, without
// its CRLF.
func readLine(r *bufio.Reader, max int) (string, error) {
	b, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", errors.New("line too long")
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	if len(b) < 2 || b[len(b)-2] != '\r' || len(b)-2 > max {
		return "", errors.New("bad line ending or line too long")
	}
	return string(b[:len(b)-2]), nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// ChunkedReader reads the data of a chunked body from a buffered reader
// (chunk extensions dropped), then its trailer section into Trailers: an
// upstream's chunked answer relayed to a client that does not speak
// HTTP/1.1 chunking (HTTP/2). The framing is checked as it is read, with
// CopyChunked's bounds on chunk lines and trailers.
type ChunkedReader struct {
	r    *bufio.Reader
	left uint64 // data left in the current chunk
	// inChunk: a chunk's data was started, and its CRLF is still to come.
	inChunk bool
	err     error
	// Trailers are the trailer fields, set once Read returned io.EOF.
	Trailers []Field
}

// NewChunkedReader reads a chunked body from r.
func NewChunkedReader(r *bufio.Reader) *ChunkedReader { return &ChunkedReader{r: r} }

func (c *ChunkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.left == 0 {
		if c.err = c.next(); c.err != nil {
			return 0, c.err
		}
	}
	if uint64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= uint64(n)
	if err == io.EOF || n == 0 && err == nil {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		c.err = err
	}
	return n, err
}

// next reads up to the next chunk's data, or the body's end (io.EOF).
func (c *ChunkedReader) next() error {
	if c.inChunk {
		if crlf, err := readLine(c.r, 2); err != nil || crlf != "" {
			return errors.New("chunk data not followed by CRLF")
		}
		c.inChunk = false
	}
	line, err := readLine(c.r, maxChunkLine)
	if err != nil {
		return err
	}
	if i := indexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = trimOWS(line)
	size, err := strconv.ParseUint(line, 16, 63)
	if err != nil || line == "" {
		return fmt.Errorf("bad chunk size %q", truncate(line, 32))
	}
	if size > 0 {
		c.left, c.inChunk = size, true
		return nil
	}
	total := 0
	for {
		line, err := readLine(c.r, maxChunkLine)
		if err != nil {
			return err
		}
		if line == "" {
			return io.EOF
		}
		total += len(line)
		name, value, ok := field(line)
		if !ok || total > maxTrailers || len(c.Trailers) == MaxFields {
			return errors.New("bad trailer section")
		}
		c.Trailers = append(c.Trailers, Field{name, value})
	}
}
