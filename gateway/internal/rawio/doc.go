// Package rawio reads and writes TCP connections with raw system calls on
// their non-blocking sockets, waiting on Go's netpoller as net does.
//
// Why: net's reads and writes tell the scheduler they enter a system
// call (entersyscall). Go's sysmon thread takes the P of a goroutine that
// stays in a system call for more than one of its ticks (20 µs) while
// there is other work, and each time it does, it goes back to waking
// every 20 µs instead of backing off to 10 ms. A proxy's writes on
// loopback often last that long (the kernel delivers to the receiver in
// the writer's time), so under load sysmon wakes thousands of times a
// second: measured by `perf stat --per-thread`, the sysmon thread was
// 15% of the gateway's CPU relaying HTTP/1.1 and 12% relaying 1 KiB
// gRPC streams. A read or write on a non-blocking socket never waits
// (it returns EAGAIN instead, and the netpoller waits), so it may be
// made as a raw system call, which the scheduler does not see: the P is
// never taken, sysmon backs off, and the two scheduler calls around
// each system call are saved too.
//
// The connection's other methods (Close, deadlines, addresses) are the
// *net.TCPConn's own; deadlines and Close end a wait as they do for net's
// reads and writes, since the waits are net's (syscall.RawConn). So are
// ReadFrom and WriteTo, which io.Copy prefers: between two sockets they
// splice, with no copy through the process, which is worth more than the
// scheduler's calls. A caller with a net.Buffers must use WriteBuffers:
// the Buffers' own WriteTo finds the embedded *net.TCPConn and writes
// past this package.
//
// Under the race detector the system calls are package syscall's (see
// sys_race.go). On systems other than Linux, Wrap and Listener change
// nothing (other.go): the package is measured on Linux, where the
// gateway runs.
package rawio
