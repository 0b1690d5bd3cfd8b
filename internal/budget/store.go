package budget

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ledgerFile is the persisted form of a ledger. In-flight reservations are
// not persisted: after a crash they were either never forwarded or are
// lost with the connection that carried them.
type ledgerFile struct {
	Version   int       `json:"version"`
	Day       string    `json:"day"`
	DayUsed   int64     `json:"dayUsed"`
	Month     string    `json:"month"`
	MonthUsed int64     `json:"monthUsed"`
	Lifetime  int64     `json:"lifetime"`
	UpdatedAt time.Time `json:"updatedAt"`
}

type store struct {
	path  string
	mu    sync.Mutex // serialises writes
	dirty chan struct{}
}

func (s *store) markDirty() {
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// FileName is the ledger's file in the state directory.
const FileName = "budget-ledger.json"

// Open returns a ledger persisted at dir/FileName, loading the counters a
// previous run saved. A missing file starts an empty ledger; a corrupt one
// is an error (refusing to start beats silently forgetting spending).
func Open(dir string, l Limits) (*Ledger, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("budget state dir: %w", err)
	}
	led := NewLedger(l)
	led.store = &store{path: filepath.Join(dir, FileName), dirty: make(chan struct{}, 1)}
	b, err := os.ReadFile(led.store.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return led, nil
	case err != nil:
		return nil, fmt.Errorf("read budget ledger: %w", err)
	}
	var f ledgerFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("budget ledger %s is corrupt (move it aside to reset spending): %w", led.store.path, err)
	}
	led.day = window{key: f.Day, used: f.DayUsed}
	led.month = window{key: f.Month, used: f.MonthUsed}
	led.lifetime = f.Lifetime
	return led, nil
}

// Flush writes the ledger now: to a temporary file, fsync, rename over the
// old one, fsync the directory, so a crash leaves the old or the new file,
// never a torn one.
func (l *Ledger) Flush() error {
	if l.store == nil {
		return nil
	}
	s := l.store
	s.mu.Lock()
	defer s.mu.Unlock()
	st := l.State()
	b, err := json.Marshal(ledgerFile{Version: 1, Day: st.Day, DayUsed: st.DayUsed, Month: st.Month,
		MonthUsed: st.MonthUsed, Lifetime: st.Lifetime, UpdatedAt: l.now().UTC()})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".budget-*.tmp")
	if err != nil {
		return fmt.Errorf("write budget ledger: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write budget ledger: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync budget ledger: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("replace budget ledger: %w", err)
	}
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Run writes the ledger behind settlements, at most once per interval, until
// ctx is done, then writes it a last time. Settled usage not yet written
// when the process is killed (at most one interval's worth) is lost; a
// graceful stop loses nothing.
func (l *Ledger) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	if l.store == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			if err := l.Flush(); err != nil && onErr != nil {
				onErr(err)
			}
			return
		case <-l.store.dirty:
		}
		if err := l.Flush(); err != nil && onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
}
