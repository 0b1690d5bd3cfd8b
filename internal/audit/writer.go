package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
}

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit: log is closed")

// maxBatchBytes bounds one group commit. Batches are otherwise as large as
// the load makes them (each caller has one entry in flight), and a batch is
// written and synced whole, so this bounds what a crash can tear, and keeps
// it far inside what recovery reads (recoveryWindow).
const maxBatchBytes = 1 << 20

// Writer appends entries to a log directory. It implements Sink.
//
// It commits in groups, the way databases commit transactions. Append
// encodes the record on the caller's goroutine, then, under a mutex held
// only to take a sequence number and a timestamp, stages the bytes in the
// batch that is filling. Whoever commits owns the files; one commit runs at
// a time. An append that finds nobody committing commits its own batch
// there and then, on its own goroutine: it links the entry to its
// predecessor, hashes it, writes it and makes it durable with one
// fdatasync — a lone caller pays one sync and no hand-over to another
// goroutine. Appends that arrive while a commit is in flight stage their
// entries in the next batch and wait; when that commit ends, the
// committer goroutine takes the whole batch that filled meanwhile, commits
// it with one write and one fdatasync, wakes its callers and takes the
// next, for as long as batches keep coming. So batches grow with the load —
// no timer, window or rate estimate decides when to commit, so no entry
// waits for company: the longest any entry waits is the rest of the commit
// in flight plus its own. The committer goroutine also writes checkpoints
// and recovers a failing log.
//
// A failed write or sync fails its batch, the entries staged behind it and
// every Append until the log has recovered (see recoverLog): the committer
// cuts every byte no sync confirmed, checks that the log on disk still ends
// with the last durable entry, reopens its files and appends an
// "audit:recover" entry that records the failure and how many appends it
// refused. It retries with back-off until that succeeds; callers fail their
// actions closed meanwhile.
type Writer struct {
	opts Options
	lock *os.File // held for the Writer's life; nil off Linux

	mu      sync.Mutex
	next    uint64 // sequence number of the next entry
	clock   clockCache
	queue   []*batch // batches to commit, oldest first; the last one fills
	spare   *batch   // the last committed batch, whose buffers the next reuses
	err     error    // why the log is failing; nil while it works
	gap     gap      // what the failure has cost so far
	closed  bool
	headSeq uint64 // last durable entry, for Head
	headHex string
	syncs   atomic.Uint64
	syncNs  atomic.Int64 // time spent in syncData, for SyncTime
	// owner is who owns the files: nobody, an appender committing its own
	// batch, or the committer goroutine. The queue is empty whenever
	// nobody does.
	owner owner
	// handOver asks an appender that commits to hand the files to the
	// committer goroutine when it is done (a checkpoint is due on the
	// timer, or Close was called).
	handOver bool
	// cpPending tells the committer goroutine that an appender's commit
	// brought a checkpoint due: it is written before the next batch, as
	// after the committer's own batches.
	cpPending bool

	kick   chan struct{} // a batch was started, or Close was called
	exited chan struct{}

	// Owned by the committer goroutine (run).
	sealer  *sealer
	prev    string // hash of the last sealed entry
	f       *os.File
	fDay    int64 // UTC day of f, in days since the Unix epoch; -1 for none
	fSize   int64 // bytes written to f
	durable filePos
	cpFile  *os.File // nil when unsigned
	cpSize  int64    // bytes of checkpoints.jsonl, all durable
	cpSeq   uint64
	cpTime  time.Time
}

// owner says who owns a Writer's files.
type owner uint8

const (
	ownerNone      owner = iota // idle: the next Append commits its own entry
	ownerAppender               // an Append commits its own batch
	ownerCommitter              // the committer goroutine
)

// filePos is the end of the last entry made durable: a log file's name and
// its size up to that entry. Bytes past it were never acknowledged.
type filePos struct {
	name string
	size int64
}

// batch is a group of entries committed with one sync.
type batch struct {
	staged []byte // head and body of each entry, back to back
	spans  []span
	out    []byte // sealed lines, built by the committer
	// hashes[i] is the hash of spans[i], set before done is closed. Each
	// batch gets a fresh slice: waiters read it after done.
	hashes []string
	done   chan struct{}
	err    error
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
		opts: opts, lock: lock, next: rec.head.Seq + 1, headSeq: rec.head.Seq, headHex: rec.head.Hash,
		kick: make(chan struct{}, 1), exited: make(chan struct{}),
		sealer: newSealer(), prev: rec.head.Hash, fDay: -1,
		cpSeq: rec.checkpoint.Seq, cpTime: opts.Now(),
	}
	if err := w.openFiles(rec.headDay); err != nil {
		w.closeFiles()
		return nil, err
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

// openFiles opens the log file of headDay ("" for a new log) and the
// checkpoints file, and takes their sizes as durable: they are what
// recovery left, synced.
func (w *Writer) openFiles(headDay string) error {
	w.durable, w.fDay, w.fSize, w.cpSize = filePos{}, -1, 0, 0
	if headDay != "" {
		t, _ := time.Parse(dayLayout, headDay)
		f, err := openLogFile(w.opts.Dir, headDay)
		if err != nil {
			return err
		}
		w.f, w.fDay = f, epochDay(t)
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("audit: %s: %w", f.Name(), err)
		}
		w.fSize = st.Size()
		w.durable = filePos{name: filepath.Base(f.Name()), size: w.fSize}
	}
	if w.opts.SigningKey != nil {
		f, err := os.OpenFile(joinDir(w.opts.Dir, checkpointName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return fmt.Errorf("audit: opening checkpoints: %w", err)
		}
		w.cpFile = f
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("audit: %s: %w", f.Name(), err)
		}
		w.cpSize = st.Size()
	}
	return nil
}

func openLogFile(dir, day string) (*os.File, error) {
	path := joinDir(dir, logFileName(day))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit: opening %s: %w", path, err)
	}
	return f, nil
}

// Append implements Sink. It returns once the entry is on stable storage.
// It does not retain r. If ctx ends while the entry waits for a commit in
// flight Append returns its error, but the entry, already part of the
// chain, is still written; an Append that commits its own entry returns
// when that commit ends. While the log is failing Append returns the
// failure at once.
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
		if err != nil {
			w.gap.entries++
		}
		w.mu.Unlock()
		*bp = body
		bodies.Put(bp)
		if err == nil {
			err = ErrClosed
		}
		return Receipt{}, err
	}
	b, seq, idx := w.stage(body)
	lead := w.owner == ownerNone
	if lead {
		// Nobody is committing, so b is the only batch: commit it here.
		w.owner = ownerAppender
		w.queue = w.queue[:0]
	}
	w.mu.Unlock()
	*bp = body
	bodies.Put(bp)

	if lead {
		w.commitOwn(b)
	}
	// Otherwise whoever commits now takes b when its commit ends.
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

// commitOwn commits b, the batch of an appender that found nobody
// committing, on that appender's goroutine, then passes the files on: to
// nobody, or to the committer goroutine when entries arrived meanwhile or
// it has work of its own (a checkpoint, recovery, Close).
func (w *Writer) commitOwn(b *batch) {
	// Once committed, b's buffers are the next batch's (w.spare).
	n, last := len(b.spans), b.spans[len(b.spans)-1].seq
	err := w.commit(b)
	if err != nil {
		w.fail(err, n)
	}
	cpDue := err == nil && w.cpFile != nil && last-w.cpSeq >= w.opts.CheckpointEvery
	w.mu.Lock()
	if len(w.queue) > 0 || w.handOver || w.closed || w.err != nil || cpDue {
		w.owner, w.handOver, w.cpPending = ownerCommitter, false, cpDue
		w.mu.Unlock()
		select {
		case w.kick <- struct{}{}:
		default:
		}
		return
	}
	w.owner = ownerNone
	w.mu.Unlock()
}

// stage gives an encoded body the next sequence number and the time, and
// adds it to the filling batch. It returns the batch, the sequence number
// and the entry's index in the batch. w.mu must be held.
func (w *Writer) stage(body []byte) (b *batch, seq uint64, idx int) {
	if n := len(w.queue); n == 0 || len(w.queue[n-1].staged) >= maxBatchBytes {
		w.queue = append(w.queue, newBatch(w.spare))
		w.spare = nil
	}
	b = w.queue[len(w.queue)-1]
	seq, ts := w.next, w.opts.Now()
	w.next++
	b.staged = w.clock.appendHead(b.staged, seq, ts)
	b.staged = append(b.staged, body...)
	b.spans = append(b.spans, span{end: len(b.staged), seq: seq, day: epochDay(ts)})
	return b, seq, len(b.spans) - 1
}

// Head returns the sequence number and hash of the last durable entry.
func (w *Writer) Head() Receipt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Receipt{Seq: w.headSeq, Hash: w.headHex}
}

// Err returns why the log is failing, or nil while it works (or once it
// has recovered).
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close commits pending entries, writes a final checkpoint and closes the
// files. Appends racing with Close either complete or get ErrClosed. If the
// log is failing Close returns the failure.
func (w *Writer) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	<-w.exited
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Back-off between recovery attempts after a failure.
const (
	firstRetry = 50 * time.Millisecond
	maxRetry   = 5 * time.Second
)

// run is the committer goroutine. Whenever it owns the files it commits
// the batches that filled while another commit was in flight, one after
// the other, as long as there are any, writes a checkpoint when one is
// due, and gives the files up. Otherwise it waits to be handed the files,
// for the checkpoint timer, a recovery attempt or Close.
func (w *Writer) run() {
	defer close(w.exited)
	defer w.closeFiles()
	tick := time.NewTicker(w.opts.CheckpointInterval)
	defer tick.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	backoff, retrying := time.Duration(0), false
	timerDue, retryDue := false, false
	for {
		w.mu.Lock()
		if w.owner == ownerAppender {
			// An appender is committing; it hands the files over when
			// it is done if there is work here.
			w.handOver = w.handOver || timerDue || retryDue || w.closed
			w.mu.Unlock()
			select {
			case <-w.kick:
			case <-tick.C:
				timerDue = true
			case <-retry.C:
				retrying, retryDue = false, true
			}
			continue
		}
		w.owner = ownerCommitter
		cpNow := w.cpPending && w.err == nil
		w.cpPending = false
		var b *batch
		if !cpNow && w.err == nil && len(w.queue) > 0 {
			b = w.queue[0]
			w.queue = w.queue[:copy(w.queue, w.queue[1:])]
		}
		failing, closing := w.err != nil, w.closed
		w.mu.Unlock()
		if cpNow {
			w.checkpoint(cpAfterBatch)
			continue
		}
		if b != nil {
			if err := w.commit(b); err != nil {
				w.fail(err, len(b.spans))
			} else {
				w.checkpoint(cpAfterBatch)
			}
			continue
		}
		if closing {
			if !failing {
				w.checkpoint(cpOnClose)
			}
			return // owning the files for good: Append refuses after Close
		}
		if timerDue {
			timerDue = false
			if !failing {
				w.checkpoint(cpOnTimer)
			}
			continue
		}
		if retryDue {
			retryDue = false
			w.recoverLog()
			continue
		}
		if !failing {
			backoff, retrying = 0, false
		} else if !retrying {
			backoff = min(max(2*backoff, firstRetry), maxRetry)
			retry.Reset(backoff)
			retrying = true
		}
		w.mu.Lock()
		if len(w.queue) > 0 && w.err == nil || w.closed {
			w.mu.Unlock()
			continue
		}
		w.owner = ownerNone
		w.mu.Unlock()
		select {
		case <-w.kick:
		case <-tick.C:
			timerDue = true
		case <-retry.C:
			retrying, retryDue = false, true
		}
	}
}

// commit seals, writes and syncs b, then wakes its callers.
func (w *Writer) commit(b *batch) error {
	err := w.seal(b)
	if err == nil {
		if err = w.syncFile(w.f); err != nil {
			err = fmt.Errorf("audit: syncing %s: %w", w.f.Name(), err)
		}
	}
	w.mu.Lock()
	if err == nil {
		last := len(b.spans) - 1
		w.headSeq, w.headHex = b.spans[last].seq, b.hashes[last]
		w.durable = filePos{name: filepath.Base(w.f.Name()), size: w.fSize}
		w.spare = b // its callers read only err and hashes
	}
	w.mu.Unlock()
	b.err = err
	close(b.done)
	return err
}

// fail records a failed write or sync that cost entries appends, and fails
// the batches staged behind it. The committer calls it.
func (w *Writer) fail(err error, entries int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.gap = gap{since: w.opts.Now(), first: err}
	}
	w.err = err
	w.gap.entries += uint64(entries)
	for _, b := range w.queue {
		w.gap.entries += uint64(len(b.spans))
		b.err = err
		close(b.done)
	}
	clear(w.queue)
	w.queue = w.queue[:0]
}

// syncFile is syncData, counted for Syncs and timed for SyncTime.
func (w *Writer) syncFile(f *os.File) error {
	w.syncs.Add(1)
	t0 := time.Now()
	err := syncData(f)
	w.syncNs.Add(int64(time.Since(t0)))
	return err
}

// SyncTime returns the time the Writer has spent in fdatasync. Against
// Syncs it is the disk's price of one commit as the log sees it, which a
// latency budget can be compared with.
func (w *Writer) SyncTime() time.Duration { return time.Duration(w.syncNs.Load()) }

// Syncs returns how many fdatasync calls the Writer has made on its files
// (batches, rotations and checkpoints). Against the number of entries it
// shows how well group commit batches.
func (w *Writer) Syncs() uint64 { return w.syncs.Load() }

// seal links and hashes a batch's entries in order and writes them,
// rotating files where the batch crosses into a new UTC day.
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
	return w.write(out)
}

func (w *Writer) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := w.f.Write(p)
	w.fSize += int64(n)
	if err != nil {
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
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("audit: %s: %w", f.Name(), err)
	}
	w.fSize = st.Size()
	if err := syncDir(w.opts.Dir); err != nil {
		return fmt.Errorf("audit: syncing directory after rotation: %w", err)
	}
	return nil
}

// closeLogFiles closes the log and checkpoint files, without syncing.
func (w *Writer) closeLogFiles() {
	for _, f := range []**os.File{&w.f, &w.cpFile} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
}

func (w *Writer) closeFiles() {
	w.closeLogFiles()
	if w.lock != nil {
		w.lock.Close()
		w.lock = nil
	}
}
