// Package fsfault makes real file writes fail, for tests of what code does
// when its disk fails. It lowers the process's RLIMIT_FSIZE soft limit, so
// that the kernel refuses writes past a size: a short write, then EFBIG,
// as a full disk gives a short write, then ENOSPC.
// Go ignores the SIGXFSZ that comes with it.
//
// The limit is process-wide and covers every file the process writes, so
// a test using it must not run in parallel with tests that write files
// larger than the limit. It imports only the standard library, and works
// on Linux only.
package fsfault
