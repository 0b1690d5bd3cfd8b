// Package learn records the destinations an agent asked for, with counts,
// so that an operator can review them (`kars egress NAME --learned`) and
// turn them into an allowlist (`--enforce`). Every decided destination is
// recorded, allowed or not; in Learn mode that is everything the agent
// reached.
//
// The record lives in the router's state directory, written atomically at
// most every few seconds and at shutdown, and survives restarts.
package learn

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// FileName is the record's file in the router's state directory.
const FileName = "egress-learned.json"

// MaxEntries bounds the record; destinations past it are counted as
// dropped, not recorded.
const MaxEntries = 10000

// Entry is one destination.
type Entry struct {
	Host string `json:"host"`
	Port uint16 `json:"port"`
	// Allowed and Denied count decisions.
	Allowed   uint64    `json:"allowed"`
	Denied    uint64    `json:"denied"`
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
	// Step and Rule are those of the last decision (learn, allowlist,
	// approval, blocklist, default, governance).
	Step string `json:"step"`
	Rule string `json:"rule,omitempty"`
}

type key struct {
	host string
	port uint16
}

// Recorder keeps the record. Use Open.
type Recorder struct {
	path    string
	mu      sync.Mutex
	m       map[key]*Entry
	dirty   bool
	dropped uint64
}

type file struct {
	Entries []Entry `json:"entries"`
	Dropped uint64  `json:"dropped,omitempty"`
}

// Open loads the record at path, or starts an empty one.
func Open(path string) (*Recorder, error) {
	r := &Recorder{path: path, m: map[key]*Entry{}}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("learned egress %s: %w", path, err)
	}
	var f file
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("learned egress %s: %w", path, err)
	}
	for i := range f.Entries {
		e := f.Entries[i]
		r.m[key{e.Host, e.Port}] = &e
	}
	r.dropped = f.Dropped
	return r, nil
}

// Record counts one decision.
func (r *Recorder) Record(host string, port uint16, allowed bool, step, rule string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := key{host, port}
	e := r.m[k]
	if e == nil {
		if len(r.m) >= MaxEntries {
			r.dropped++
			return
		}
		e = &Entry{Host: host, Port: port, FirstSeen: now}
		r.m[k] = e
	}
	if allowed {
		e.Allowed++
	} else {
		e.Denied++
	}
	e.LastSeen, e.Step, e.Rule = now, step, rule
	r.dirty = true
}

// List returns the entries, most requested first.
func (r *Recorder) List() (entries []Entry, dropped uint64) {
	r.mu.Lock()
	out := make([]Entry, 0, len(r.m))
	for _, e := range r.m {
		out = append(out, *e)
	}
	dropped = r.dropped
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Entry) int {
		if c := cmp.Compare(b.Allowed+b.Denied, a.Allowed+a.Denied); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
	return out, dropped
}

// Flush writes the record if it changed: temporary file, fsync, rename.
func (r *Recorder) Flush() error {
	r.mu.Lock()
	if !r.dirty {
		r.mu.Unlock()
		return nil
	}
	r.dirty = false
	r.mu.Unlock()
	entries, dropped := r.List()
	raw, err := json.Marshal(file{Entries: entries, Dropped: dropped})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(r.path), 0o700); err != nil {
		return err
	}
	tmp := r.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(raw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, r.path)
	}
	if err != nil {
		r.mu.Lock()
		r.dirty = true
		r.mu.Unlock()
	}
	return err
}

// Run flushes every interval until ctx is done, then once more.
func (r *Recorder) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := r.Flush(); err != nil && onErr != nil {
				onErr(err)
			}
			return
		case <-t.C:
			if err := r.Flush(); err != nil && onErr != nil {
				onErr(err)
			}
		}
	}
}
