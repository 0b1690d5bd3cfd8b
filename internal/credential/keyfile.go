package credential

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// KeyFile is an API key read from a mounted Secret file. It re-reads the file
// when its modification time or size changes, so a rotated Secret takes
// effect without a restart, and stats it at most once per second.
type KeyFile struct {
	Path string

	mu      sync.Mutex
	key     string
	modTime time.Time
	size    int64
	checked time.Time
}

// Credential returns the key from the file.
func (k *KeyFile) Credential(context.Context) (Credential, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now()
	if k.key != "" && now.Sub(k.checked) < time.Second {
		return Credential{Secret: k.key}, nil
	}
	k.checked = now
	fi, err := os.Stat(k.Path)
	if err != nil {
		return Credential{}, fmt.Errorf("API key file: %w", err)
	}
	if k.key != "" && fi.ModTime().Equal(k.modTime) && fi.Size() == k.size {
		return Credential{Secret: k.key}, nil
	}
	b, err := os.ReadFile(k.Path)
	if err != nil {
		return Credential{}, fmt.Errorf("API key file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return Credential{}, fmt.Errorf("API key file %s is empty", k.Path)
	}
	k.key, k.modTime, k.size = key, fi.ModTime(), fi.Size()
	return Credential{Secret: key}, nil
}
