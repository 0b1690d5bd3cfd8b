package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
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
	// CommitWindow is how long a batch may wait for more entries before it
	// is written and synced, counted from its first entry. The batch waits
	// only while other callers are appending fast enough that more entries
	// are expected within the window (see pacer); a lone append is synced
	// at once. Zero commits every batch as soon as the previous sync
	// allows. Waiting trades up to this much latency per append for fewer
	// fdatasyncs under load; DefaultCommitWindow suits kars-router.
	CommitWindow time.Duration
	// A batch that holds CommitMaxEntries entries (default 128) or
	// CommitMaxBytes bytes (default 128 KiB) stops waiting. It is not
	// split: entries that arrive while it is being sealed join it.
	CommitMaxEntries int
	CommitMaxBytes   int
}

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit: log is closed")

// Writer appends entries to a log directory. It implements Sink.
//
// Append encodes the record on the caller's goroutine, then, under a mutex
// held only to take a sequence number and a timestamp, stages the bytes in
// the current batch and waits. Two goroutines commit batches in a pipeline:
// the sealer links each entry of a batch to its predecessor, hashes it and
// writes the batch; the syncer calls fdatasync once for the whole batch
// (group commit), wakes its callers and writes checkpoints. While batch k
// syncs, batch k+1 is sealed and written and batch k+2 fills, so the cost of
// a sync is shared by everything that arrived during the previous one. With
// a CommitWindow the sealer also holds a batch back for a moment while other
// callers keep appending, so that one sync covers more entries even when
// syncs are quick (pacer).
//
// A failed write or sync poisons the Writer: after fsync fails the kernel's
// page cache no longer says what is on disk, so every later Append fails and
// callers fail their actions closed until the process restarts and recovers.
type Writer struct {
	opts Options
	lock *os.File // held for the Writer's life; nil off Linux

	mu      sync.Mutex
	next    uint64 // sequence number of the next entry
	clock   clockCache
	cur     *batch
	spare   []*batch // committed batches whose buffers can be reused
	err     error    // sticky failure
	closed  bool
	headSeq uint64 // last durable entry, for Head
	headHex string
	pace    pacer
	waiting int       // entries staged or being committed
	start   time.Time // origin of the pacer's monotonic clock
	syncs   atomic.Uint64

	kick     chan struct{}
	exited   chan struct{}
	syncQ    chan *batch // sealed, written batches
	inflight sync.WaitGroup

	// Owned by the sealing goroutine (run).
	sealer *sealer
	prev   string // hash of the last sealed entry
	f      *os.File
	fDay   int64 // UTC day of f, in days since the Unix epoch; -1 for none

	// Owned by the checkpointing goroutine; nil cpFile when unsigned.
	cpFile *os.File
	cpSeq  uint64
	cpTime time.Time
	cpKick chan struct{} // a batch became durable
	cpStop chan struct{}
	cpDone chan struct{}
}

// batch is a group of entries committed with one sync.
type batch struct {
	staged []byte // head and body of each entry, back to back
	spans  []span
	out    []byte   // sealed lines, built by the sealer
	file   *os.File // the file the batch ends in, for the syncer
	// hashes[i] is the hash of spans[i], set before done is closed. Each
	// batch gets a fresh slice: waiters read it after done.
	hashes []string
	done   chan struct{}
	err    error
	// For the pacer, when there is a commit window: arrival times of the
	// first and latest entries, the gap before the first, and the sum of
	// all arrival times.
	first, last, lead, arrivals time.Duration
}

func (b *batch) pending() pending {
	return pending{first: b.first, last: b.last, lead: b.lead, entries: len(b.spans), bytes: len(b.staged)}
}

type span struct {
	end int // offset in staged just past this entry's body
	seq uint64
	day int64 // UTC day of the entry's timestamp
}

func newBatch(reuse *batch) *batch {
	b := &batch{done: make(chan struct{})}
	if reuse != nil {
		b.staged, b.spans, b.out = reuse.staged[:0], reuse.spans[:0], reuse.out[:0]
	}
	return b
}

// bodies pools the buffers Append encodes record bodies into.
var bodies = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func epochDay(t time.Time) int64 { return t.Unix() / 86400 }

func dayName(day int64) string { return time.Unix(day*86400, 0).UTC().Format(dayLayout) }

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
	if opts.CommitMaxEntries <= 0 {
		opts.CommitMaxEntries = defaultCommitMaxEntries
	}
	if opts.CommitMaxBytes <= 0 {
		opts.CommitMaxBytes = defaultCommitMaxBytes
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("audit: creating log directory: %w", err)
	}
	lock, err := lockDir(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("audit: locking %s: %w", opts.Dir, err)
	}
	rec, err := recoverDir(opts.Dir)
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		return nil, err
	}
	w := &Writer{
		opts: opts, lock: lock, next: rec.head.Seq + 1, cur: newBatch(nil), headSeq: rec.head.Seq, headHex: rec.head.Hash,
		kick: make(chan struct{}, 1), exited: make(chan struct{}), syncQ: make(chan *batch),
		sealer: newSealer(), prev: rec.head.Hash, fDay: -1,
		cpSeq: rec.checkpoint.Seq, cpTime: opts.Now(),
		cpKick: make(chan struct{}, 1), cpStop: make(chan struct{}), cpDone: make(chan struct{}),
		pace:  pacer{window: opts.CommitWindow, maxEntries: opts.CommitMaxEntries, maxBytes: opts.CommitMaxBytes},
		start: time.Now(),
	}
	if rec.headDay != "" {
		t, _ := time.Parse(dayLayout, rec.headDay)
		if w.f, err = openLogFile(opts.Dir, rec.headDay); err != nil {
			w.closeFiles()
			return nil, err
		}
		w.fDay = epochDay(t)
	}
	if opts.SigningKey != nil {
		w.cpFile, err = os.OpenFile(joinDir(opts.Dir, checkpointName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			w.closeFiles()
			return nil, fmt.Errorf("audit: opening checkpoints: %w", err)
		}
	}
	go w.run()
	go w.checkpointer()
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
// It does not retain r. If ctx ends first Append returns its error, but the
// entry, already part of the chain, is still written.
func (w *Writer) Append(ctx context.Context, r Record) (Receipt, error) {
	if err := ctx.Err(); err != nil {
		return Receipt{}, err
	}
	e := entryFromRecord(&r)
	bp := bodies.Get().(*[]byte)
	body := appendBody((*bp)[:0], &e)

	w.mu.Lock()
	if w.err != nil || w.closed {
		err := w.err
		w.mu.Unlock()
		*bp = body
		bodies.Put(bp)
		if err == nil {
			err = ErrClosed
		}
		return Receipt{}, err
	}
	b := w.cur
	seq, ts := w.next, w.opts.Now()
	w.next++
	if w.pace.window > 0 {
		now := time.Since(w.start)
		gap := w.pace.arrive(now, w.waiting, len(b.spans) > 0)
		if len(b.spans) == 0 {
			b.first, b.lead = now, gap
		}
		b.last = now
		b.arrivals += now
	}
	w.waiting++
	b.staged = w.clock.appendHead(b.staged, seq, ts)
	b.staged = append(b.staged, body...)
	b.spans = append(b.spans, span{end: len(b.staged), seq: seq, day: epochDay(ts)})
	idx := len(b.spans) - 1
	// The sealer needs waking when a batch starts, and when a batch it may
	// be holding back is full.
	kick := idx == 0 || w.pace.full(len(b.spans), len(b.staged))
	w.mu.Unlock()
	*bp = body
	bodies.Put(bp)

	if kick {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	if done := ctx.Done(); done == nil {
		<-b.done // a context that never ends: skip the select
	} else {
		select {
		case <-b.done:
		case <-done:
			return Receipt{}, fmt.Errorf("audit: entry %d not yet durable: %w", seq, ctx.Err())
		}
	}
	if b.err != nil {
		return Receipt{}, b.err
	}
	return Receipt{Seq: seq, Hash: b.hashes[idx]}, nil
}

// Head returns the sequence number and hash of the last durable entry.
func (w *Writer) Head() Receipt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Receipt{Seq: w.headSeq, Hash: w.headHex}
}

// Close flushes pending entries, writes a final checkpoint and closes the
// files. Appends racing with Close either complete or get ErrClosed.
func (w *Writer) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	// Kick even if a failure closed the log already: the sealer may be
	// waiting for work that will never come.
	select {
	case w.kick <- struct{}{}:
	default:
	}
	<-w.exited
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// run is the sealing stage: it takes the current batch, seals and writes
// it, and hands it to the syncing stage, so that batch k+1 is sealed and
// written while batch k is being synced. Sealing is one goroutine, so the
// chain order is the sequence order. Before it takes a batch it asks the
// pacer whether to let the batch fill a little longer.
func (w *Writer) run() {
	defer close(w.exited)
	syncerDone := make(chan struct{})
	go w.syncer(syncerDone)
	defer func() {
		close(w.syncQ)
		<-syncerDone
		close(w.cpStop)
		<-w.cpDone
		w.closeFiles()
	}()
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	for {
		<-w.kick
		for {
			// Whatever a pending kick announced is about to be seen.
			select {
			case <-w.kick:
			default:
			}
			w.mu.Lock()
			b, closing, failed := w.cur, w.closed, w.err
			if len(b.spans) == 0 {
				w.mu.Unlock()
				if closing {
					return
				}
				break
			}
			if !closing && w.pace.window > 0 {
				if wait := w.pace.due(b.pending()) - time.Since(w.start); wait > 0 {
					w.mu.Unlock()
					// A full batch or Close wakes the sealer early.
					hold.Reset(wait)
					select {
					case <-hold.C:
					case <-w.kick:
						hold.Stop()
					}
					continue
				}
			}
			var reuse *batch
			if n := len(w.spare); n > 0 {
				reuse, w.spare = w.spare[n-1], w.spare[:n-1]
			}
			w.cur = newBatch(reuse)
			w.mu.Unlock()
			if failed == nil {
				if failed = w.seal(b); failed != nil {
					w.poison(failed)
				}
			}
			if failed != nil {
				w.mu.Lock()
				w.waiting -= len(b.spans)
				w.mu.Unlock()
				b.err = failed
				close(b.done)
				continue
			}
			w.inflight.Add(1)
			w.syncQ <- b
		}
	}
}

// syncer is the syncing stage: it makes each written batch durable and
// wakes its callers.
func (w *Writer) syncer(done chan struct{}) {
	defer close(done)
	for b := range w.syncQ {
		w.mu.Lock()
		err := w.err
		w.mu.Unlock()
		if err == nil {
			if serr := w.syncFile(b.file); serr != nil {
				err = fmt.Errorf("audit: syncing %s: %w", b.file.Name(), serr)
				w.poison(err)
			}
		}
		w.mu.Lock()
		b.err = err
		if err == nil {
			w.headSeq, w.headHex = b.spans[len(b.spans)-1].seq, b.hashes[len(b.hashes)-1]
		}
		w.waiting -= len(b.spans)
		if w.pace.window > 0 {
			w.pace.acked(time.Since(w.start), len(b.spans), b.arrivals)
		}
		if len(w.spare) < 4 { // one per pipeline stage is enough
			w.spare = append(w.spare, b)
		}
		w.mu.Unlock()
		close(b.done)
		w.inflight.Done()
		if err == nil {
			select {
			case w.cpKick <- struct{}{}:
			default:
			}
		}
	}
}

// syncFile is syncData, counted for Syncs.
func (w *Writer) syncFile(f *os.File) error {
	w.syncs.Add(1)
	return syncData(f)
}

// Syncs returns how many fdatasync calls the Writer has made on its files
// (batches, rotations and checkpoints). Against the number of entries it
// shows how well group commit batches.
func (w *Writer) Syncs() uint64 { return w.syncs.Load() }

// poison records the first failure and stops accepting entries.
func (w *Writer) poison(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.closed = true
	w.mu.Unlock()
}

// seal links and hashes a batch's entries in order and writes them,
// rotating files where the batch crosses into a new UTC day. Syncing is the
// syncer's.
func (w *Writer) seal(b *batch) error {
	out := b.out[:0]
	b.hashes = make([]string, len(b.spans))
	from := 0
	for i, sp := range b.spans {
		if sp.day > w.fDay {
			if err := w.write(out); err != nil {
				return err
			}
			out = out[:0]
			// The syncer may still be syncing the old file; let it
			// finish before the file is closed.
			w.inflight.Wait()
			if err := w.rotate(sp.day); err != nil {
				return err
			}
		}
		line := len(out)
		out = append(out, b.staged[from:sp.end]...)
		out = appendTail(out, w.prev)
		out, w.prev = w.sealer.finish(out, line)
		b.hashes[i] = w.prev
		from = sp.end
	}
	b.out = out
	b.file = w.f
	return w.write(out)
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
func (w *Writer) rotate(day int64) error {
	if w.f != nil {
		if err := w.syncFile(w.f); err != nil {
			return fmt.Errorf("audit: syncing %s before rotation: %w", w.f.Name(), err)
		}
		if err := w.f.Close(); err != nil {
			return fmt.Errorf("audit: closing %s: %w", w.f.Name(), err)
		}
		w.f = nil
	}
	f, err := openLogFile(w.opts.Dir, dayName(day))
	if err != nil {
		return err
	}
	w.f, w.fDay = f, day
	if err := syncDir(w.opts.Dir); err != nil {
		return fmt.Errorf("audit: syncing directory after rotation: %w", err)
	}
	return nil
}

func (w *Writer) closeFiles() {
	for _, f := range []**os.File{&w.f, &w.cpFile, &w.lock} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
}
