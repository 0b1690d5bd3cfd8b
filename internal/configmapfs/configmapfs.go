// Package configmapfs lays out files the way the kubelet's atomic writer
// publishes a mounted ConfigMap or Secret: each generation in its own
// hidden directory, a ..data symlink renamed onto the newest one, and a
// symlink per file through ..data. Tests use it to swap configuration under
// a running watcher exactly as a cluster would.
package configmapfs

import (
	"fmt"
	"os"
	"path/filepath"
)

// Publish writes files as generation gen of the volume at dir and makes it
// current with one rename, so a reader sees either the old generation or
// the new one, never a mix.
func Publish(dir string, gen int, files map[string][]byte) error {
	genDir := filepath.Join(dir, fmt.Sprintf("..2026_11_26_00_00_%02d.%d", gen%60, gen))
	if err := os.Mkdir(genDir, 0o755); err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(genDir, name), data, 0o644); err != nil {
			return err
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(genDir), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				return err
			}
		}
	}
	return nil
}
