// Package dirwatch reports the files of directories that were replaced,
// created, removed, or written and closed — and not each write to a file
// kept open.
//
// A configuration file is watched through its directory (an editor's rename
// and a ConfigMap's symlink swap replace the file a watch on it would
// hold). fsnotify's directory watch reports every write to every file in
// it: a log file beside the configuration, appended to a line at a time,
// woke the gateway for each line (47 us of its CPU a line when idle, 4% of
// it under load when the backend logged each request next to the file).
// A configuration is changed by a write that ends in close, a rename or a
// symlink swap, so those are the events asked for; a writer that holds the
// file open is seen at its close.
package dirwatch

// Event is a change to a directory entry.
type Event struct {
	// Name is the entry's path (the directory joined with its name), or ""
	// when the kernel's queue overflowed and events were lost: anything
	// may have changed.
	Name string
}
