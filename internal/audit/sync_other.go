//go:build !linux

package audit

import "os"

// syncData flushes f to stable storage. Off Linux (where only the offline
// verifier is expected to run) a full fsync is the portable choice.
func syncData(f *os.File) error { return f.Sync() }
