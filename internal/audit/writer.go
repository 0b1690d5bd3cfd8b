package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// Options configures a Writer.
type Options struct {
	// Dir is the log directory; it is created if missing.
	Dir string
	// Sandbox names the writer in the entries the log writes about itself.
	Sandbox string
	// SigningKey signs checkpoints. Nil disables checkpoints, which leaves
	// the log tamper-evident only up to a full rewrite: production sets it.
	SigningKey ed25519.PrivateKey
	// CheckpointEvery writes a checkpoint after this many entries (default
	// 1000) ...
	CheckpointEvery uint64
	// ... or after this much time with new entries (default 10s).
	CheckpointInterval time.Duration
	// Now is the clock for entry timestamps (default time.Now).
	Now func() time.Time
}

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit: log is closed")

// Writer appends entries to a log directory. It implements Sink.
//
// Append assigns the sequence number and chain hash under a mutex, adds the
// line to the current batch and waits; one committer goroutine writes each
// batch and calls fdatasync once for all of it (group commit), then wakes
// the batch's callers. While one batch syncs the next one fills, so the cost
// of a sync is shared by everything that arrived during the previous one.
//
// A failed write or sync poisons the Writer: after fsync fails the kernel's
// page cache no longer says what is on disk, so every later Append fails and
// callers fail their actions closed until the process restarts and recovers.
type Writer struct {
	opts Options

	mu      sync.Mutex
	next    uint64 // sequence number of the next entry
	prev    string // hash of the last entry handed out
	sealer  *sealer
	cur     *batch
	spare   []byte
	lastDay string // day of the file the last entry went to
	err     error  // sticky failure
	closed  bool

	kick   chan struct{}
	exited chan struct{}

	// Owned by the committer goroutine.
	f          *os.File
	fDay       string
	cpFile     *os.File
	cpSeq      uint64
	cpTime     time.Time
	durableSeq uint64
	durableHex string
}

type batch struct {
	buf      []byte
	cuts     []cut // where the batch crosses into a new day's file
	n        int
	lastSeq  uint64
	lastHash string
	done     chan struct{}
	err      error
}

type cut struct {
	off int
	day string
}

func newBatch(buf []byte) *batch { return &batch{buf: buf[:0], done: make(chan struct{})} }

// Open opens (or creates) the log in opts.Dir, recovers it after a crash and
// starts the committer. Recovery cuts a torn last line, continues the chain
// from the last valid entry and appends an "audit:open" entry recording the
// restart and the checkpoint key in force.
func Open(opts Options) (*Writer, error) {
	if opts.Dir == "" {
		return nil, errors.New("audit: Options.Dir is required")
	}
	if opts.CheckpointEvery == 0 {
		opts.CheckpointEvery = 1000
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = 10 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("audit: creating log directory: %w", err)
	}
	rec, err := recoverDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	w := &Writer{
		opts: opts, next: rec.head.Seq + 1, prev: rec.head.Hash, sealer: newSealer(),
		cur: newBatch(nil), lastDay: rec.headDay, kick: make(chan struct{}, 1), exited: make(chan struct{}),
		cpSeq: rec.checkpoint.Seq, cpTime: opts.Now(), durableSeq: rec.head.Seq, durableHex: rec.head.Hash,
	}
	if rec.headDay != "" {
		if w.f, err = openLogFile(opts.Dir, rec.headDay); err != nil {
			return nil, err
		}
		w.fDay = rec.headDay
	}
	if opts.SigningKey != nil {
		w.cpFile, err = os.OpenFile(joinDir(opts.Dir, checkpointName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			w.closeFiles()
			return nil, fmt.Errorf("audit: opening checkpoints: %w", err)
		}
	}
	go w.run()
	attrs := map[string]string{
		"previous_seq":    strconv.FormatUint(rec.head.Seq, 10),
		"recovered_bytes": strconv.FormatInt(rec.cutBytes, 10),
		"checkpoint_key":  "",
	}
	if opts.SigningKey != nil {
		attrs["checkpoint_key"] = KeyString(opts.SigningKey.Public().(ed25519.PublicKey))
	}
	if rec.tornFile != "" {
		attrs["torn_tail_saved_as"] = rec.tornFile
	}
	if _, err := w.Append(context.Background(), Record{Sandbox: opts.Sandbox, Agent: "kars-audit",
		Action: ActionOpen, Decision: "record", Reason: "audit log opened", Attrs: attrs}); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// ActionOpen is the action of the entry a Writer appends each time it opens
// the log. Its checkpoint_key attribute names the key that signs checkpoints
// from there on; the verifier checks checkpoints against it.
const ActionOpen = "audit:open"

func openLogFile(dir, day string) (*os.File, error) {
	path := joinDir(dir, logFileName(day))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit: opening %s: %w", path, err)
	}
	return f, nil
}

// Append implements Sink. It returns once the entry is on stable storage.
// If ctx ends first Append returns its error, but the entry, already part of
// the chain, is still written.
func (w *Writer) Append(ctx context.Context, r Record) (Receipt, error) {
	if err := ctx.Err(); err != nil {
		return Receipt{}, err
	}
	e := entryFromRecord(&r)
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return Receipt{}, err
	}
	if w.closed {
		w.mu.Unlock()
		return Receipt{}, ErrClosed
	}
	b := w.cur
	e.Seq, e.Prev, e.Time = w.next, w.prev, w.opts.Now()
	if day := dayOf(e.Time); day > w.lastDay {
		b.cuts = append(b.cuts, cut{off: len(b.buf), day: day})
		w.lastDay = day
	}
	b.buf = w.sealer.seal(b.buf, &e)
	w.next++
	w.prev = e.Hash
	b.n++
	b.lastSeq, b.lastHash = e.Seq, e.Hash
	w.mu.Unlock()

	select {
	case w.kick <- struct{}{}:
	default:
	}
	select {
	case <-b.done:
	case <-ctx.Done():
		return Receipt{}, fmt.Errorf("audit: entry %d not yet durable: %w", e.Seq, ctx.Err())
	}
	if b.err != nil {
		return Receipt{}, b.err
	}
	return Receipt{Seq: e.Seq, Hash: e.Hash}, nil
}

// Head returns the sequence number and hash of the last entry handed out.
func (w *Writer) Head() Receipt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Receipt{Seq: w.next - 1, Hash: w.prev}
}

// Close flushes pending entries, writes a final checkpoint and closes the
// files. Appends racing with Close either complete or get ErrClosed.
func (w *Writer) Close() error {
	w.mu.Lock()
	already := w.closed
	w.closed = true
	w.mu.Unlock()
	if !already {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	<-w.exited
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// run is the committer loop.
func (w *Writer) run() {
	defer close(w.exited)
	defer w.closeFiles()
	tick := time.NewTicker(w.opts.CheckpointInterval)
	defer tick.Stop()
	for {
		select {
		case <-w.kick:
		case <-tick.C:
			w.checkpointIfDue(cpOnTimer)
			continue
		}
		for {
			w.mu.Lock()
			b, closing := w.cur, w.closed
			if b.n == 0 {
				w.mu.Unlock()
				if closing {
					w.checkpointIfDue(cpOnClose)
					return
				}
				break
			}
			w.cur = newBatch(w.spare)
			w.spare = nil
			w.mu.Unlock()

			err := w.commit(b)
			w.mu.Lock()
			if err != nil && w.err == nil {
				w.err = err
			}
			b.err = w.err
			w.spare = b.buf
			w.mu.Unlock()
			close(b.done)
			if b.err != nil {
				w.failPending()
				return
			}
			w.durableSeq, w.durableHex = b.lastSeq, b.lastHash
			w.checkpointIfDue(cpAfterBatch)
		}
	}
}

// failPending wakes every caller still waiting after the log was poisoned.
func (w *Writer) failPending() {
	w.mu.Lock()
	b := w.cur
	w.cur = newBatch(nil)
	w.closed = true
	b.err = w.err
	w.mu.Unlock()
	close(b.done)
}

// commit writes a batch, rotating files where it crosses a day, and syncs.
func (w *Writer) commit(b *batch) error {
	off := 0
	for _, c := range b.cuts {
		if c.off > off {
			if err := w.write(b.buf[off:c.off]); err != nil {
				return err
			}
		}
		off = c.off
		if err := w.rotate(c.day); err != nil {
			return err
		}
	}
	if err := w.write(b.buf[off:]); err != nil {
		return err
	}
	if err := syncData(w.f); err != nil {
		return fmt.Errorf("audit: syncing %s: %w", w.f.Name(), err)
	}
	return nil
}

func (w *Writer) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if _, err := w.f.Write(p); err != nil {
		return fmt.Errorf("audit: writing %s: %w", w.f.Name(), err)
	}
	return nil
}

// rotate finishes the current day's file and starts day's. The old file is
// synced before the new one exists, and the directory after, so that after
// a crash the chain's order on disk is the order of the file names.
func (w *Writer) rotate(day string) error {
	if w.f != nil {
		if err := syncData(w.f); err != nil {
			return fmt.Errorf("audit: syncing %s before rotation: %w", w.f.Name(), err)
		}
		if err := w.f.Close(); err != nil {
			return fmt.Errorf("audit: closing %s: %w", w.f.Name(), err)
		}
	}
	f, err := openLogFile(w.opts.Dir, day)
	if err != nil {
		return err
	}
	w.f, w.fDay = f, day
	if err := syncDir(w.opts.Dir); err != nil {
		return fmt.Errorf("audit: syncing directory after rotation: %w", err)
	}
	return nil
}

// Why a checkpoint is considered.
const (
	cpAfterBatch = iota // only if CheckpointEvery entries accumulated
	cpOnTimer           // if CheckpointInterval passed since the last one
	cpOnClose           // if anything is unsigned
)

// checkpointIfDue signs the durable head when it is due.
func (w *Writer) checkpointIfDue(why int) {
	if w.cpFile == nil || w.durableSeq <= w.cpSeq {
		return
	}
	now := w.opts.Now()
	switch why {
	case cpAfterBatch:
		if w.durableSeq-w.cpSeq < w.opts.CheckpointEvery {
			return
		}
	case cpOnTimer:
		if now.Sub(w.cpTime) < w.opts.CheckpointInterval*9/10 {
			return
		}
	}
	cp := Checkpoint{Seq: w.durableSeq, Hash: w.durableHex, Time: now}
	line := signCheckpoint(w.opts.SigningKey, &cp)
	err := func() error {
		if _, err := w.cpFile.Write(line); err != nil {
			return err
		}
		return syncData(w.cpFile)
	}()
	if err != nil {
		w.mu.Lock()
		if w.err == nil {
			w.err = fmt.Errorf("audit: writing checkpoint: %w", err)
		}
		w.mu.Unlock()
		return
	}
	w.cpSeq, w.cpTime = cp.Seq, now
}

func (w *Writer) closeFiles() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	if w.cpFile != nil {
		w.cpFile.Close()
		w.cpFile = nil
	}
}
