//go:build linux && race

package rawio

import (
	"errors"
	"syscall"
	"unsafe"
)

// Under the race detector the reads and writes are package syscall's,
// which tell the detector that a write to a socket happens before the
// read of what it wrote (the same process is often at both ends in
// tests); raw system calls would hide that and report races that are not.
// Everything else in the package is the same.

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return n, errnoOf(err)
}

func sysWritev(fd uintptr, iov []syscall.Iovec) (int, syscall.Errno) {
	// The first buffer only, by syscall.Write: net's own writev has no
	// annotation, and syscall.Write's is what a read of it acquires. A
	// short write is a writev's right; the caller writes the rest.
	n, err := syscall.Write(int(fd), unsafe.Slice(iov[0].Base, iov[0].Len))
	return n, errnoOf(err)
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return n, errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if err != nil && !errors.As(err, &errno) {
		return syscall.EIO
	}
	return errno
}
