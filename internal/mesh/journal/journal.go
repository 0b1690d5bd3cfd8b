// Package journal is a crash-safe append-only record log with group
// commit, the durability under kars-mesh's registry and relay.
//
// Each record is framed as u32be(length) ‖ u32be(CRC-32C(payload)) ‖
// payload. Appends from many goroutines are written and fsynced
// together by whichever waiter gets there first (group commit), so one
// fsync covers every record queued meanwhile. On open the log is
// replayed in order; a torn or corrupt tail — what a crash in the
// middle of a write leaves — is cut off at the last whole record.
// Compaction (Rewrite) writes the caller's live records to a new file,
// fsyncs it, renames it over the log and fsyncs the directory, so a
// crash at any point leaves either the old log or the new one.
package journal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// MaxRecord bounds one record; a length field above it marks a corrupt
// tail rather than a reason to allocate.
const MaxRecord = 16 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrClosed is returned by operations on a closed log.
var ErrClosed = errors.New("journal: closed")

// Log is an open journal. Its methods are safe for concurrent use.
type Log struct {
	path string

	mu       sync.Mutex
	cond     *sync.Cond
	f        *os.File
	buf      []byte // framed records not yet written
	spare    []byte // the last written group's buffer, reused
	queued   uint64 // ticket of the last Append
	durable  uint64 // every ticket ≤ durable is on disk
	flushing bool
	// compacting: a Compaction is between Begin and Finish; no flush
	// starts meanwhile, so appends stay in buf for the new file.
	compacting bool
	err        error // sticky write error: the log refuses further work
	size       int64 // bytes on disk, including buf once flushed
	closed     bool
	kick       chan struct{}
	stopped    chan struct{}
}

// Open opens (creating if needed) the log at path and calls replay for
// every whole record in order. If replay fails, Open fails.
func Open(path string, replay func(rec []byte) error) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	good, err := scan(f, replay)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("journal: %w", err)
	}
	if st.Size() != good {
		// A torn tail from a crash mid-write: cut it so new records
		// follow the last whole one.
		if err := f.Truncate(good); err != nil {
			f.Close()
			return nil, fmt.Errorf("journal: truncating torn tail: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, fmt.Errorf("journal: %w", err)
		}
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		f.Close()
		return nil, err
	}
	l := &Log{path: path, f: f, size: good, kick: make(chan struct{}, 1), stopped: make(chan struct{})}
	l.cond = sync.NewCond(&l.mu)
	go l.background()
	return l, nil
}

// scan replays whole records and returns the offset after the last one.
func scan(f *os.File, replay func([]byte) error) (int64, error) {
	r := bufio.NewReaderSize(f, 1<<16)
	var off int64
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return off, nil // EOF or a torn header
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if n > MaxRecord {
			return off, nil
		}
		rec := make([]byte, n)
		if _, err := io.ReadFull(r, rec); err != nil {
			return off, nil
		}
		if crc32.Checksum(rec, castagnoli) != binary.BigEndian.Uint32(hdr[4:]) {
			return off, nil
		}
		if err := replay(rec); err != nil {
			return off, fmt.Errorf("replaying record at offset %d: %w", off, err)
		}
		off += 8 + int64(n)
	}
}

func frame(dst, rec []byte) []byte {
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(rec)))
	binary.BigEndian.PutUint32(hdr[4:], crc32.Checksum(rec, castagnoli))
	return append(append(dst, hdr[:]...), rec...)
}

// Append queues rec and returns a ticket for Wait. Records are written
// in Append order. Callers that must order records with their own state
// call Append under their own lock.
func (l *Log) Append(rec []byte) uint64 {
	if len(rec) > MaxRecord {
		panic(fmt.Sprintf("journal: record of %d bytes exceeds MaxRecord", len(rec)))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = frame(l.buf, rec)
	l.queued++
	if !l.closed {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	return l.queued
}

// background flushes what nobody waits for, so every record reaches the
// disk within one fsync of being appended, not only those a caller
// waits on. It shares flushLocked with Wait: whoever comes first writes
// the group.
func (l *Log) background() {
	defer close(l.stopped)
	for range l.kick {
		l.mu.Lock()
		for l.flushing || l.compacting {
			l.cond.Wait()
		}
		if l.closed {
			l.mu.Unlock()
			return
		}
		if l.durable < l.queued && l.err == nil {
			l.flushLocked()
		}
		l.mu.Unlock()
	}
}

// Wait blocks until the record with ticket t is on disk (fsynced).
func (l *Log) Wait(t uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.durable < t {
		if l.err != nil {
			return l.err
		}
		if l.closed {
			return ErrClosed
		}
		if l.flushing || l.compacting {
			l.cond.Wait()
			continue
		}
		l.flushLocked()
	}
	return nil
}

// Tail returns the ticket of the last record appended: waiting on it
// waits for everything appended so far.
func (l *Log) Tail() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.queued
}

// Commit appends rec and waits for it to be durable.
func (l *Log) Commit(rec []byte) error { return l.Wait(l.Append(rec)) }

// flushLocked writes and fsyncs everything queued, releasing the lock
// for the I/O so appends keep queuing behind it (the next group).
func (l *Log) flushLocked() {
	buf, upto := l.buf, l.queued
	l.buf, l.spare = l.spare[:0], nil
	l.flushing = true
	f := l.f
	l.mu.Unlock()
	_, err := f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	l.mu.Lock()
	l.flushing = false
	if cap(buf) <= 16<<20 { // keep a burst's buffer, not a huge one
		l.spare = buf[:0]
	}
	if err != nil {
		l.err = fmt.Errorf("journal %s: %w", l.path, err)
	} else {
		l.size += int64(len(buf))
		if upto > l.durable {
			l.durable = upto
		}
	}
	l.cond.Broadcast()
}

// Size reports the bytes on disk.
func (l *Log) Size() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}

// Rewrite replaces the log with the records live emits: compaction. The
// caller must hold whatever lock orders its Appends, so the live set
// reflects every record appended so far; queued records are then
// superseded by the rewrite and their waiters released as durable.
func (l *Log) Rewrite(live func(emit func(rec []byte)) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.flushing || l.compacting {
		l.cond.Wait()
	}
	if l.err != nil {
		return l.err
	}
	if l.closed {
		return ErrClosed
	}
	tmp := l.path + ".compact"
	nf, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("journal: compaction: %w", err)
	}
	w := bufio.NewWriterSize(nf, 1<<16)
	var size int64
	var buf []byte
	if err := live(func(rec []byte) {
		buf = frame(buf[:0], rec)
		size += int64(len(buf))
		w.Write(buf)
	}); err != nil {
		nf.Close()
		os.Remove(tmp)
		return err
	}
	err = w.Flush()
	if err == nil {
		err = nf.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, l.path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(l.path))
	}
	if err != nil {
		nf.Close()
		os.Remove(tmp)
		return fmt.Errorf("journal: compaction: %w", err)
	}
	l.f.Close()
	l.f = nf
	l.size = size
	l.buf = nil
	l.durable = l.queued
	l.cond.Broadcast()
	return nil
}

// Compaction is a rewrite that does its I/O without holding up
// appends, begun by BeginCompaction and ended by Finish.
type Compaction struct {
	l    *Log
	mark int // len(buf) at the start: what the live set supersedes
}

// ErrCompacting is returned by BeginCompaction while one is running.
var ErrCompacting = errors.New("journal: a compaction is already running")

// BeginCompaction starts a rewrite. Call it under the lock that orders
// the caller's appends, at the moment the caller snapshots its live
// records; then, without that lock, pass the snapshot to Finish. It
// never waits: a flush already writing finishes into the old file,
// which the snapshot supersedes. Appends continue meanwhile but are not
// made durable until Finish puts them after the snapshot in the new
// file.
func (l *Log) BeginCompaction() (*Compaction, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.err != nil:
		return nil, l.err
	case l.closed:
		return nil, ErrClosed
	case l.compacting:
		return nil, ErrCompacting
	}
	l.compacting = true
	return &Compaction{l: l, mark: len(l.buf)}, nil
}

// Finish writes live (the snapshot taken with BeginCompaction) and then
// every record appended since to a new file, fsyncs it, renames it over
// the log and fsyncs the directory. If anything fails the log carries
// on in its old file with nothing lost.
func (c *Compaction) Finish(live [][]byte) error {
	l := c.l
	tmp := l.path + ".compact"
	nf, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	var size int64
	if err == nil {
		w := bufio.NewWriterSize(nf, 1<<16)
		var b []byte
		for _, rec := range live {
			b = frame(b[:0], rec)
			size += int64(len(b))
			w.Write(b)
		}
		err = w.Flush()
		if err == nil {
			err = nf.Sync()
		}
	}
	l.mu.Lock()
	for l.flushing { // a flush begun before BeginCompaction
		l.cond.Wait()
	}
	whole, upto := l.buf, l.queued
	l.buf = nil
	l.mu.Unlock()
	if err == nil {
		tail := whole[c.mark:]
		if _, err = nf.Write(tail); err == nil {
			size += int64(len(tail))
			err = nf.Sync()
		}
	}
	if err == nil {
		err = os.Rename(tmp, l.path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(l.path))
	}
	if err != nil {
		if nf != nil {
			nf.Close()
		}
		os.Remove(tmp)
		// Back to the old file: everything taken goes there.
		_, werr := l.f.Write(whole)
		if werr == nil {
			werr = l.f.Sync()
		}
		l.mu.Lock()
		l.compacting = false
		if werr != nil {
			l.err = fmt.Errorf("journal %s: %w", l.path, werr)
		} else {
			l.size += int64(len(whole))
			l.durable = max(l.durable, upto)
		}
		l.cond.Broadcast()
		l.mu.Unlock()
		return fmt.Errorf("journal: compaction: %w", err)
	}
	l.mu.Lock()
	old := l.f
	l.f, l.size = nf, size
	l.durable = max(l.durable, upto)
	l.compacting = false
	l.cond.Broadcast()
	l.mu.Unlock()
	old.Close()
	return nil
}

// Close flushes queued records and closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	for l.flushing || l.compacting {
		l.cond.Wait()
	}
	if l.durable < l.queued && l.err == nil {
		l.flushLocked()
	}
	l.closed = true
	l.cond.Broadcast()
	close(l.kick)
	l.mu.Unlock()
	<-l.stopped
	l.mu.Lock()
	err := l.f.Close()
	if l.err != nil {
		return l.err
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("journal: syncing %s: %w", dir, err)
	}
	return nil
}
