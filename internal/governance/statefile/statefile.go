// Package statefile replaces small state files atomically and durably, for
// the governance components that must remember something across restarts
// (trust scores, quarantines) without a database.
//
// A write goes to a temporary file in the same directory, is synced, renamed
// over the target and the directory is synced, so that after a crash the
// file holds either the old contents or the new, never a mix. It imports
// only the standard library.
package statefile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Write atomically replaces path with data.
func Write(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("statefile: %w", err)
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(name)
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("statefile: writing %s: %w", name, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("statefile: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("statefile: syncing %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("statefile: %w", err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("statefile: replacing %s: %w", path, err)
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("statefile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("statefile: syncing %s: %w", dir, err)
	}
	return nil
}

// Read returns the file's contents, or nil and no error when it does not
// exist yet.
func Read(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("statefile: %w", err)
	}
	return data, nil
}
