package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/mesh/journal"
)

// Inbox is the relay's store-and-forward queue: every routed frame is
// journalled before it is acknowledged to its sender, kept per
// recipient in arrival order, and deleted when the recipient acks it or
// its TTL passes (§12.3). Frames are held in memory too — quotas bound
// how much — so delivery never reads the disk; the journal is what a
// restart replays.
type Inbox struct {
	mu         sync.Mutex
	log        *journal.Log
	queues     map[string]*queue
	seq        uint64
	dead       int // journal records no longer live, for compaction
	live       int
	compacting bool // a journal compaction is writing
	total      int  // bytes of every queued frame
	q          Quotas
}

// Quotas bound what the relay holds. Queued frames live in memory (and
// in the journal), so these bound its memory too.
type Quotas struct {
	// PerRecipientMessages and PerRecipientBytes bound one agent's
	// queue.
	PerRecipientMessages int
	PerRecipientBytes    int
	// TotalBytes bounds all queues together: registration is open to
	// any key holder, so per-agent quotas alone would let someone with
	// many identities exhaust the relay.
	TotalBytes int
}

type entry struct {
	seq     uint64
	id      string
	sender  string
	frame   []byte
	stored  time.Time
	deleted bool
}

type queue struct {
	entries []*entry // by seq; deleted ones are skipped and swept lazily
	byID    map[string]*entry
	bytes   int
	gone    int
}

// Quota errors.
var (
	ErrInboxFull = errors.New("relay: recipient's inbox is full")
	ErrRelayFull = errors.New("relay: storage is full; try later")
)

// OpenInbox replays dir's journal.
func OpenInbox(dir string, q Quotas) (*Inbox, error) {
	in := &Inbox{queues: map[string]*queue{}, q: q}
	log, err := journal.Open(filepath.Join(dir, "relay.journal"), in.apply)
	if err != nil {
		return nil, err
	}
	in.log = log
	return in, nil
}

// Close closes the journal.
func (in *Inbox) Close() error { return in.log.Close() }

const (
	opPut = 'P'
	opAck = 'A'
)

func (in *Inbox) apply(rec []byte) error {
	d := decoder{b: rec}
	switch d.byte() {
	case opPut:
		e := &entry{seq: d.u64(), stored: time.Unix(0, int64(d.u64()))}
		recipient := d.str()
		e.sender, e.id = d.str(), d.str()
		e.frame = d.bytes()
		if d.err {
			return fmt.Errorf("truncated put record")
		}
		if e.seq > in.seq {
			in.seq = e.seq
		}
		q := in.queue(recipient)
		if q.byID[e.id] == nil {
			q.add(e)
			in.live++
			in.total += len(e.frame)
		} else {
			in.dead++
		}
	case opAck:
		recipient, id := d.str(), d.str()
		if d.err {
			return fmt.Errorf("truncated ack record")
		}
		in.remove(recipient, id)
		in.dead++ // the ack record itself
	default:
		return fmt.Errorf("unknown inbox record %q", rec[0])
	}
	return nil
}

func (in *Inbox) queue(recipient string) *queue {
	q := in.queues[recipient]
	if q == nil {
		q = &queue{byID: map[string]*entry{}}
		in.queues[recipient] = q
	}
	return q
}

func (q *queue) add(e *entry) {
	q.entries = append(q.entries, e)
	q.byID[e.id] = e
	q.bytes += len(e.frame)
}

func (in *Inbox) remove(recipient, id string) bool {
	q := in.queues[recipient]
	if q == nil {
		return false
	}
	e := q.byID[id]
	if e == nil {
		return false
	}
	e.deleted = true
	delete(q.byID, id)
	q.bytes -= len(e.frame)
	in.total -= len(e.frame)
	q.gone++
	in.live--
	in.dead++
	if q.gone > 64 && q.gone > len(q.entries)/2 {
		keep := q.entries[:0]
		for _, x := range q.entries {
			if !x.deleted {
				keep = append(keep, x)
			}
		}
		clear(q.entries[len(keep):])
		q.entries, q.gone = keep, 0
	}
	if len(q.byID) == 0 {
		delete(in.queues, recipient)
	}
	return true
}

// Put stores frame for recipient and returns the journal ticket to wait
// on before telling the sender it is stored. A frame whose id is already
// queued for recipient is a duplicate (§12.3 dedup): dup is true,
// nothing is stored, and the ticket covers the original, which may not
// be on disk yet.
func (in *Inbox) Put(recipient, sender, id string, frame []byte, now time.Time) (ticket uint64, dup bool, err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	q := in.queue(recipient)
	if q.byID[id] != nil {
		return in.log.Tail(), true, nil
	}
	var full error
	switch {
	case len(q.byID) >= in.q.PerRecipientMessages || q.bytes+len(frame) > in.q.PerRecipientBytes:
		full = ErrInboxFull
	case in.total+len(frame) > in.q.TotalBytes:
		full = ErrRelayFull
	}
	if full != nil {
		if len(q.byID) == 0 {
			delete(in.queues, recipient)
		}
		return 0, false, full
	}
	in.seq++
	e := &entry{seq: in.seq, id: id, sender: sender, frame: frame, stored: now}
	q.add(e)
	in.live++
	in.total += len(frame)
	t := in.log.Append(putRecord(recipient, e))
	in.maybeCompact()
	return t, false, nil
}

// Ack deletes recipient's frame id; only the recipient's own acks reach
// here, so no agent can delete another's mail.
func (in *Inbox) Ack(recipient, id string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.remove(recipient, id) {
		return false
	}
	var enc encoder
	enc.byte(opAck)
	enc.str(recipient)
	enc.str(id)
	in.log.Append(enc.b) // durability of deletes can lag: a lost ack only redelivers
	in.dead++            // the ack record is dead weight once written
	in.maybeCompact()
	return true
}

// After returns up to max live frames for recipient with seq > after,
// in order.
func (in *Inbox) After(recipient string, after uint64, max int) []*entry {
	in.mu.Lock()
	defer in.mu.Unlock()
	q := in.queues[recipient]
	if q == nil {
		return nil
	}
	i := sort.Search(len(q.entries), func(i int) bool { return q.entries[i].seq > after })
	var out []*entry
	for ; i < len(q.entries) && len(out) < max; i++ {
		if !q.entries[i].deleted {
			out = append(out, q.entries[i])
		}
	}
	return out
}

// Expire deletes frames stored before cutoff and reports how many.
func (in *Inbox) Expire(cutoff time.Time) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	type key struct{ r, id string }
	var old []key
	for r, q := range in.queues {
		for _, e := range q.entries {
			if !e.deleted && e.stored.Before(cutoff) {
				old = append(old, key{r, e.id})
			}
		}
	}
	for _, k := range old {
		in.remove(k.r, k.id)
		var enc encoder
		enc.byte(opAck)
		enc.str(k.r)
		enc.str(k.id)
		in.log.Append(enc.b)
		in.dead++
	}
	in.maybeCompact()
	return len(old)
}

// Queued reports recipient's queued frames and bytes.
func (in *Inbox) Queued(recipient string) (msgs, bytes int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if q := in.queues[recipient]; q != nil {
		return len(q.byID), q.bytes
	}
	return 0, 0
}

// Wait blocks until ticket is durable.
func (in *Inbox) Wait(ticket uint64) error { return in.log.Wait(ticket) }

// maybeCompact rewrites the journal once dead records outnumber live
// ones and there are at least 32,768 of them. Only the snapshot is
// taken under the inbox lock; encoding, writing and fsyncing happen in
// a goroutine while routing goes on (journal.BeginCompaction). Callers
// hold mu.
func (in *Inbox) maybeCompact() {
	if in.compacting || in.dead < 1<<15 || in.dead < in.live {
		return
	}
	c, err := in.log.BeginCompaction()
	if err != nil {
		return
	}
	type live struct {
		recipient string
		e         *entry
	}
	var snap []live
	recips := make([]string, 0, len(in.queues))
	for r := range in.queues {
		recips = append(recips, r)
	}
	sort.Strings(recips)
	for _, r := range recips {
		for _, e := range in.queues[r].entries {
			if !e.deleted {
				snap = append(snap, live{r, e})
			}
		}
	}
	in.compacting = true
	in.dead = 0
	go func() {
		// An entry's fields other than deleted never change, so the
		// snapshot encodes without the lock.
		recs := make([][]byte, 0, len(snap))
		for _, x := range snap {
			recs = append(recs, putRecord(x.recipient, x.e))
		}
		err := c.Finish(recs)
		in.mu.Lock()
		in.compacting = false
		if err != nil {
			in.dead = 1 << 15 // try again on the next change
		}
		in.mu.Unlock()
	}()
}

func putRecord(recipient string, e *entry) []byte {
	var enc encoder
	enc.byte(opPut)
	enc.u64(e.seq)
	enc.u64(uint64(e.stored.UnixNano()))
	enc.str(recipient)
	enc.str(e.sender)
	enc.str(e.id)
	enc.bytes(e.frame)
	return enc.b
}

type encoder struct{ b []byte }

func (e *encoder) byte(c byte)  { e.b = append(e.b, c) }
func (e *encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) str(s string) {
	e.b = binary.BigEndian.AppendUint16(e.b, uint16(len(s)))
	e.b = append(e.b, s...)
}
func (e *encoder) bytes(p []byte) {
	e.b = binary.BigEndian.AppendUint32(e.b, uint32(len(p)))
	e.b = append(e.b, p...)
}

type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) take(n int) []byte {
	if d.err || len(d.b) < n {
		d.err = true
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}
func (d *decoder) byte() byte {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}
func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}
func (d *decoder) str() string {
	p := d.take(2)
	if p == nil {
		return ""
	}
	return string(d.take(int(binary.BigEndian.Uint16(p))))
}
func (d *decoder) bytes() []byte {
	p := d.take(4)
	if p == nil {
		return nil
	}
	return append([]byte(nil), d.take(int(binary.BigEndian.Uint32(p)))...)
}
