package blocklist

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultRefresh is how often sources are fetched again.
const DefaultRefresh = 6 * time.Hour

// MaxListBytes bounds one source's download.
const MaxListBytes = 256 << 20

// Source is where one list comes from.
type Source struct {
	// Name identifies the source in status and logs ("file:/etc/…",
	// "https://…", "oci://…").
	Name string
	// Fetch writes the list to w. etag is what the last successful fetch
	// returned; a source that can tell the list is unchanged returns
	// notModified and writes nothing.
	Fetch func(ctx context.Context, w io.Writer, etag string) (newETag string, notModified bool, err error)
}

// FileSource reads a file (a mounted ConfigMap key is one too).
func FileSource(name, path string) Source {
	return Source{Name: name, Fetch: func(_ context.Context, w io.Writer, _ string) (string, bool, error) {
		f, err := os.Open(path)
		if err != nil {
			return "", false, err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return "", false, err
	}}
}

// URLSource fetches an HTTPS URL (plain HTTP only when insecure is set, for
// tests), with a conditional GET on the last ETag.
func URLSource(url string, client *http.Client, insecure bool) (Source, error) {
	if !strings.HasPrefix(url, "https://") && !(insecure && strings.HasPrefix(url, "http://")) {
		return Source{}, fmt.Errorf("blocklist URL %q: want https://", url)
	}
	return Source{Name: url, Fetch: func(ctx context.Context, w io.Writer, etag string) (string, bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return "", false, err
		}
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", false, err
		}
		defer resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusNotModified && etag != "":
			return etag, true, nil
		case resp.StatusCode != http.StatusOK:
			return "", false, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		_, err = io.Copy(w, resp.Body)
		return resp.Header.Get("ETag"), false, err
	}}, nil
}

// SourceStatus is what the loader knows of one source.
type SourceStatus struct {
	Name string `json:"name"`
	// Digest is the SHA-256 of the list in use from this source.
	Digest  string `json:"digest,omitempty"`
	Domains int    `json:"domains"`
	Skipped int    `json:"skipped,omitempty"`
	// FetchedAt is when the list in use was fetched (or confirmed
	// unchanged); LastAttempt and LastError describe the latest try.
	FetchedAt   time.Time `json:"fetchedAt,omitzero"`
	LastAttempt time.Time `json:"lastAttempt,omitzero"`
	LastError   string    `json:"lastError,omitempty"`
	ETag        string    `json:"etag,omitempty"`
}

// Snapshot is a built set with where it came from.
type Snapshot struct {
	Set *Set `json:"-"`
	// Version is the SHA-256 over the sources' digests: the same lists
	// give the same version on every router.
	Version string    `json:"version"`
	Domains int       `json:"domains"`
	BuiltAt time.Time `json:"builtAt,omitzero"`
	// Oldest is the fetch time of the oldest list in use; the set's age
	// is measured from it.
	Oldest  time.Time      `json:"oldest,omitzero"`
	Sources []SourceStatus `json:"sources"`
}

// Age is how old the oldest list in the set is at now; zero for an empty
// set.
func (s *Snapshot) Age(now time.Time) time.Duration {
	if s == nil || s.Oldest.IsZero() {
		return 0
	}
	return now.Sub(s.Oldest)
}

// Loader keeps a Set current from its sources. Each source's last good
// list is kept on disk in Dir, so a failed fetch — or a restart while a
// source is down — keeps the last good list in force.
type Loader struct {
	Dir      string
	Sources  []Source
	Interval time.Duration
	Log      *slog.Logger
	// OnUpdate, if set, is called after every refresh with the snapshot
	// in force (metrics).
	OnUpdate func(*Snapshot)

	mu     sync.Mutex // serialises refreshes
	cur    atomic.Pointer[Snapshot]
	status []SourceStatus
}

// stateFile records the per-source status next to the cached lists.
const stateFile = "sources.json"

// Current returns the snapshot in force (an empty one before the first
// load).
func (l *Loader) Current() *Snapshot {
	if s := l.cur.Load(); s != nil {
		return s
	}
	return &Snapshot{}
}

// Contains checks host against the set in force.
func (l *Loader) Contains(host string) (string, bool) {
	s := l.cur.Load()
	if s == nil {
		return "", false
	}
	return s.Set.Contains(host)
}

// Start builds the set from the lists cached on disk (fast, and what a
// router restarting while its sources are down must enforce), then
// fetches every source once.
func (l *Loader) Start(ctx context.Context) error {
	if err := os.MkdirAll(l.Dir, 0o700); err != nil {
		return fmt.Errorf("blocklist cache %s: %w", l.Dir, err)
	}
	l.mu.Lock()
	l.status = l.readStatus()
	err := l.rebuild()
	l.mu.Unlock()
	if err != nil {
		l.log().Warn("cached blocklist unusable; fetching", "err", err)
	}
	return l.Refresh(ctx)
}

// Run refreshes every Interval until ctx is done.
func (l *Loader) Run(ctx context.Context) {
	iv := l.Interval
	if iv <= 0 {
		iv = DefaultRefresh
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := l.Refresh(ctx); err != nil {
				l.log().Warn("blocklist refresh failed; the last good list stays in force", "err", err)
			}
		}
	}
}

// Refresh fetches every source; a source that fails keeps its last good
// list. The set is rebuilt when any list changed. The error joins the
// sources' failures.
func (l *Loader) Refresh(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	changed := l.cur.Load() == nil
	for i, src := range l.Sources {
		st := &l.status[i]
		st.LastAttempt = time.Now()
		upd, err := l.fetch(ctx, src, st)
		if err != nil {
			st.LastError = err.Error()
			errs = append(errs, fmt.Errorf("%s: %w", src.Name, err))
			continue
		}
		st.LastError = ""
		changed = changed || upd
	}
	if changed {
		if err := l.rebuild(); err != nil {
			errs = append(errs, err)
		}
	} else {
		l.publish(l.cur.Load().Set)
	}
	l.writeStatus()
	return errors.Join(errs...)
}

// fetch downloads src to a temporary file, checks that it parses to at
// least one domain, and moves it over the cached list. It reports whether
// the cached list changed.
func (l *Loader) fetch(ctx context.Context, src Source, st *SourceStatus) (bool, error) {
	tmp, err := os.CreateTemp(l.Dir, "fetch-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	lw := &limitedWriter{w: io.MultiWriter(tmp, h), n: MaxListBytes}
	etag, notModified, err := src.Fetch(ctx, lw, st.ETag)
	if err == nil && lw.over {
		err = fmt.Errorf("list larger than %d bytes", MaxListBytes)
	}
	if err != nil {
		return false, err
	}
	if notModified {
		st.FetchedAt, st.ETag = time.Now(), etag
		return false, nil
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	stats, err := Parse(tmp, NewBuilder())
	if err != nil {
		return false, err
	}
	if stats.Domains == 0 {
		return false, fmt.Errorf("the list names no domain (%d lines, %d skipped); keeping the last good list", stats.Lines, stats.Skipped)
	}
	if err := tmp.Sync(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), l.cachePath(src)); err != nil {
		return false, err
	}
	changed := digest != st.Digest
	st.Digest, st.Domains, st.Skipped, st.FetchedAt, st.ETag = digest, stats.Domains, stats.Skipped, time.Now(), etag
	return changed, nil
}

// rebuild builds the set from every cached list.
func (l *Loader) rebuild() error {
	b := NewBuilder()
	var errs []error
	for i, src := range l.Sources {
		if l.status[i].Digest == "" {
			continue // never fetched
		}
		f, err := os.Open(l.cachePath(src))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: cached list: %w", src.Name, err))
			continue
		}
		_, err = Parse(f, b)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: cached list: %w", src.Name, err))
		}
	}
	l.publish(b.Build())
	return errors.Join(errs...)
}

func (l *Loader) publish(set *Set) {
	snap := &Snapshot{Set: set, Domains: set.Len(), BuiltAt: time.Now(), Sources: append([]SourceStatus(nil), l.status...)}
	h := sha256.New()
	for _, st := range l.status {
		if st.Digest == "" {
			continue
		}
		h.Write([]byte(st.Digest))
		if snap.Oldest.IsZero() || st.FetchedAt.Before(snap.Oldest) {
			snap.Oldest = st.FetchedAt
		}
	}
	if !snap.Oldest.IsZero() {
		snap.Version = "sha256:" + hex.EncodeToString(h.Sum(nil))
	}
	if old := l.cur.Load(); old != nil && old.Set == set {
		snap.BuiltAt = old.BuiltAt
	}
	l.cur.Store(snap)
	if l.OnUpdate != nil {
		l.OnUpdate(snap)
	}
}

func (l *Loader) cachePath(src Source) string {
	sum := sha256.Sum256([]byte(src.Name))
	return filepath.Join(l.Dir, hex.EncodeToString(sum[:8])+".list")
}

// readStatus loads the status of the cached lists, keeping only sources
// still configured whose cached list exists.
func (l *Loader) readStatus() []SourceStatus {
	out := make([]SourceStatus, len(l.Sources))
	var saved []SourceStatus
	if raw, err := os.ReadFile(filepath.Join(l.Dir, stateFile)); err == nil {
		_ = json.Unmarshal(raw, &saved)
	}
	for i, src := range l.Sources {
		out[i].Name = src.Name
		for _, s := range saved {
			if s.Name != src.Name {
				continue
			}
			if _, err := os.Stat(l.cachePath(src)); err == nil {
				out[i] = s
			}
		}
	}
	return out
}

func (l *Loader) writeStatus() {
	raw, _ := json.Marshal(l.status)
	p := filepath.Join(l.Dir, stateFile)
	if err := os.WriteFile(p+".tmp", raw, 0o600); err == nil {
		_ = os.Rename(p+".tmp", p)
	}
}

func (l *Loader) log() *slog.Logger {
	if l.Log == nil {
		return slog.Default()
	}
	return l.Log
}

type limitedWriter struct {
	w    io.Writer
	n    int64
	over bool
}

func (lw *limitedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > lw.n {
		lw.over = true
		return 0, errors.New("list too large")
	}
	lw.n -= int64(len(p))
	return lw.w.Write(p)
}
