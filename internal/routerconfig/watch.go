package routerconfig

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher holds the live config and replaces it when the file changes.
//
// A mounted ConfigMap is updated by the kubelet writing a new timestamped
// directory and atomically renaming the "..data" symlink to it; a local
// substrate replaces router.json by rename. Both show up as events on the
// containing directory, so the watcher watches the directory, not the file,
// and re-reads the path on any event. A config that fails to parse or
// validate is reported and ignored: the previous snapshot stays live.
//
// Readers call Current once per request and keep that snapshot for the
// request's lifetime, so a swap never changes the rules under an in-flight
// call.
type Watcher struct {
	path string
	root string
	cur  atomic.Pointer[Snapshot]
	mu   sync.Mutex // serialises reloads

	// OnChange is called after a new snapshot is live. Set before Run.
	OnChange func(old, cur *Snapshot)
	// OnError is called when a changed file cannot be loaded. Set before Run.
	OnError func(error)
	// PollInterval re-reads the file even without events, as a safety net
	// for filesystems whose notifications are unreliable. Zero means 5s.
	PollInterval time.Duration
}

// NewWatcher loads path once and fails if the initial config is invalid: a
// router never starts without a policy. With a root (EnvRoot), path and
// every file path in the config resolve under it (Snapshot.Under); the
// digests stay those of the config as compiled.
func NewWatcher(path, root string) (*Watcher, error) {
	w := &Watcher{path: UnderRoot(root, path), root: root}
	s, err := w.load()
	if err != nil {
		return nil, err
	}
	w.cur.Store(s)
	return w, nil
}

func (w *Watcher) load() (*Snapshot, error) {
	s, err := Load(w.path)
	if err != nil {
		return nil, err
	}
	return s.Under(w.root), nil
}

// Current returns the live snapshot.
func (w *Watcher) Current() *Snapshot { return w.cur.Load() }

// Reload re-reads the file and swaps it in if its digest or its a2a
// section differs from the live one's. It reports whether the live config changed.
func (w *Watcher) Reload() (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s, err := w.load()
	if err != nil {
		return false, err
	}
	old := w.cur.Load()
	// The digest leaves the a2a section out (Canonical), so compare it too.
	if old != nil && old.Digest == s.Digest && SameA2A(old.Config, s.Config) {
		return false, nil
	}
	w.cur.Store(s)
	if w.OnChange != nil {
		w.OnChange(old, s)
	}
	return true, nil
}

// Run watches the config's directory until ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch router config: %w", err)
	}
	defer fw.Close()
	dir := filepath.Dir(w.path)
	if err := fw.Add(dir); err != nil {
		return fmt.Errorf("watch router config directory %s: %w", dir, err)
	}
	poll := w.PollInterval
	if poll <= 0 {
		poll = 5 * time.Second
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	base := filepath.Base(w.path)
	reload := func() {
		if _, err := w.Reload(); err != nil && w.OnError != nil {
			w.OnError(err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			// Only the config file itself or the ConfigMap's ..data
			// symlink matter; other files in the directory do not.
			if name := filepath.Base(ev.Name); name == base || name == "..data" {
				reload()
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			if w.OnError != nil {
				w.OnError(fmt.Errorf("watch router config: %w", err))
			}
		case <-tick.C:
			reload()
		}
	}
}
