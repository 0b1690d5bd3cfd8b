//go:build !linux

package audit

import "os"

// syncData flushes f to stable storage. Off Linux (where only the offline
// verifier is expected to run) a full fsync is the portable choice.
func syncData(f *os.File) error { return f.Sync() }

// lockDir is a no-op off Linux, where only the offline verifier runs.
func lockDir(dir string) (*os.File, error) { return nil, nil }
