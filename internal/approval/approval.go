// Package approval holds tool calls that a policy decided require_approval
// until a person approves or denies them, they time out, or the caller
// goes away. It is the router's approval queue: pure Go, no I/O — the
// router writes the audit entries and serves the admin API around it.
//
// A Queue is bounded: Open refuses with ErrFull beyond its capacity, so a
// misbehaving agent cannot pin unbounded memory or requests in the router.
// Each pending call has an id of a strict form (ValidID), is decided at
// most once (a second decision is ErrDecided), and disappears from the
// queue when its Wait returns, whatever ended it. Stop ends every held
// call at once when the router shuts down.
package approval

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// Outcome is how a held call ended.
type Outcome string

// The outcomes of Wait.
const (
	Approved  Outcome = "approved"
	Denied    Outcome = "denied"
	TimedOut  Outcome = "timeout"
	Abandoned Outcome = "abandoned" // the caller's request ended first
)

// Errors of Open and Decide.
var (
	ErrFull        = errors.New("too many calls are awaiting approval")
	ErrUnknown     = errors.New("no pending approval with this id")
	ErrDecided     = errors.New("this approval is already decided")
	ErrNotApprover = errors.New("not one of the rule's approvers")
	ErrStopped     = errors.New("the router is stopping and holds no new calls")
)

// Request describes the call to hold.
type Request struct {
	Action string
	Rule   string
	Reason string
	// ArgsSHA256 is the hex SHA-256 of the arguments as sent ("" for none);
	// Args is a short summary of them for the person deciding (never the
	// whole arguments: they may be large or sensitive).
	ArgsSHA256 string
	Args       string
	// Approvers may decide; empty means anyone holding the admin token.
	Approvers []string
	// Timeout is how long the call is held; it must be positive.
	Timeout time.Duration
}

// Pending is a held call as the admin API lists it.
type Pending struct {
	ID         string    `json:"id"`
	Action     string    `json:"action"`
	Rule       string    `json:"rule"`
	Reason     string    `json:"reason"`
	ArgsSHA256 string    `json:"argsSha256,omitempty"`
	Args       string    `json:"args,omitempty"`
	Approvers  []string  `json:"approvers,omitempty"`
	Requested  time.Time `json:"requested"`
	Expires    time.Time `json:"expires"`
	// AgeSeconds is how long the call has been held when listed.
	AgeSeconds float64 `json:"ageSeconds"`
}

// Result is how a held call ended and, when a person decided, who.
type Result struct {
	Outcome Outcome
	By      string
	// Stopped is set on an Abandoned call that Stop ended: the router
	// shut down, not the caller.
	Stopped bool
}

// Queue is the bounded set of held calls. The zero value is not usable;
// call New.
type Queue struct {
	mu      sync.Mutex
	max     int
	entries map[string]*entry
	// ended remembers the ids of the last calls that left the queue, so
	// that a late decision on one is ErrDecided (it was decided, timed out
	// or abandoned) rather than ErrUnknown; bounded by keepEnded.
	ended     map[string]Pending
	endedFIFO []string
	// stopped is set by Stop: no call is held from then on.
	stopped bool
	now     func() time.Time
}

// keepEnded is how many ended calls a queue remembers per place.
const keepEnded = 4

type entry struct {
	p       Pending
	visible bool
	done    chan Result // buffered 1; written once, by whoever decides
	decided bool
	// settled is closed when the entry is published or dropped unpublished:
	// its pending audit entry can be read (and its id known) a moment before
	// Publish, and a decision in that moment waits for it.
	settled       chan struct{}
	settledClosed bool
}

// publishWait bounds how long a decision on a call not yet published
// waits for it (the pending entry's audit append is bounded at ~10 s).
const publishWait = 15 * time.Second

// New returns a queue holding at most max calls (at least 1).
func New(capacity int) *Queue {
	return &Queue{max: max(capacity, 1), entries: map[string]*entry{}, ended: map[string]Pending{}, now: time.Now}
}

// Ticket is one held call.
type Ticket struct {
	q *Queue
	e *entry
}

// Open reserves a place for req and returns its ticket, or ErrFull. The
// call is not listed nor decidable until Publish: the router first makes
// the pending entry durable in the audit log.
func (q *Queue) Open(req Request) (*Ticket, error) {
	if req.Timeout <= 0 {
		return nil, errors.New("approval: a positive timeout is required")
	}
	id, err := newID()
	if err != nil {
		return nil, err
	}
	now := q.now()
	e := &entry{done: make(chan Result, 1), settled: make(chan struct{}), p: Pending{ID: id, Action: req.Action, Rule: req.Rule, Reason: req.Reason,
		ArgsSHA256: req.ArgsSHA256, Args: req.Args, Approvers: slices.Clone(req.Approvers), Requested: now, Expires: now.Add(req.Timeout)}}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return nil, ErrStopped
	}
	if len(q.entries) >= q.max {
		return nil, fmt.Errorf("%w (%d pending, the router's bound)", ErrFull, len(q.entries))
	}
	q.entries[id] = e
	return &Ticket{q: q, e: e}, nil
}

// ID is the ticket's approval id.
func (t *Ticket) ID() string { return t.e.p.ID }

// Expires is when the held call times out.
func (t *Ticket) Expires() time.Time { return t.e.p.Expires }

// Publish lists the call and lets it be decided.
func (t *Ticket) Publish() {
	t.q.mu.Lock()
	t.e.visible = true
	t.e.settle()
	t.q.mu.Unlock()
}

// settle closes settled once; the queue's lock is held.
func (e *entry) settle() {
	if !e.settledClosed {
		e.settledClosed = true
		close(e.settled)
	}
}

// Close drops a ticket that was never waited on (its pending entry could
// not be recorded).
func (t *Ticket) Close() {
	t.q.mu.Lock()
	delete(t.q.entries, t.e.p.ID)
	t.e.settle()
	t.q.mu.Unlock()
}

// Wait holds the caller until the call is decided, its timeout passes or
// ctx ends, and removes it from the queue. Whichever comes first wins: a
// decision that arrives after the timeout fired is ErrDecided to the
// person who made it.
func (t *Ticket) Wait(ctx context.Context) Result {
	timer := time.NewTimer(time.Until(t.e.p.Expires))
	defer timer.Stop()
	var res Result
	select {
	case res = <-t.e.done:
	case <-timer.C:
		res = t.settle(Result{Outcome: TimedOut})
	case <-ctx.Done():
		res = t.settle(Result{Outcome: Abandoned})
	}
	q := t.q
	q.mu.Lock()
	delete(q.entries, t.e.p.ID)
	q.remember(t.e.p)
	q.mu.Unlock()
	return res
}

// remember keeps p among the ended calls, forgetting the oldest beyond
// keepEnded per place; the queue's lock is held.
func (q *Queue) remember(p Pending) {
	if _, ok := q.ended[p.ID]; ok {
		return
	}
	q.ended[p.ID] = p
	q.endedFIFO = append(q.endedFIFO, p.ID)
	if len(q.endedFIFO) > keepEnded*q.max {
		delete(q.ended, q.endedFIFO[0])
		q.endedFIFO = q.endedFIFO[1:]
	}
}

// Stop ends every held call, published or not, as abandoned with Stopped
// set — unless a decision got there first, which stands — and makes Open
// refuse with ErrStopped from then on, so that a router shutting down
// answers its held calls at once instead of waiting out their timeouts.
// A decision after Stop is ErrDecided, as on any ended call. Stop may be
// called more than once.
func (q *Queue) Stop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stopped = true
	for _, e := range q.entries {
		if !e.decided {
			e.decided = true
			e.done <- Result{Outcome: Abandoned, Stopped: true}
		}
	}
}

// Ended records calls that ended before this queue existed — held by the
// previous router, and decided, timed out, stopped or closed out in its
// audit log at the next start — so that a decision on one is ErrDecided,
// as for a call ended here, rather than ErrUnknown. The same bound
// applies: the oldest are forgotten first.
func (q *Queue) Ended(ps ...Pending) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, p := range ps {
		if _, held := q.entries[p.ID]; !held {
			q.remember(p)
		}
	}
}

// settle ends the wait with r unless a decision got there first.
func (t *Ticket) settle(r Result) Result {
	t.q.mu.Lock()
	decided := t.e.decided
	t.e.decided = true
	t.q.mu.Unlock()
	if decided {
		return <-t.e.done
	}
	return r
}

// Decide approves or denies the pending call id on behalf of by.
//
// The id of a held call is known from its pending audit entry, which is
// durable (and can be read) just before the call is published; a decision
// arriving in between waits for the publication, up to publishWait, rather
// than answering that no such call exists.
func (q *Queue) Decide(id string, approve bool, by string) (Pending, error) {
	q.mu.Lock()
	if e := q.entries[id]; e != nil && !e.visible && !e.decided {
		settled := e.settled
		q.mu.Unlock()
		select {
		case <-settled:
		case <-time.After(publishWait):
		}
		q.mu.Lock()
	}
	defer q.mu.Unlock()
	e := q.entries[id]
	if e != nil && e.decided {
		// Decided, or ended by Stop (perhaps before it was published).
		return e.p, ErrDecided
	}
	if e == nil || !e.visible {
		if p, ok := q.ended[id]; ok {
			return p, ErrDecided
		}
		return Pending{}, ErrUnknown
	}
	if len(e.p.Approvers) > 0 && !slices.Contains(e.p.Approvers, by) {
		return e.p, ErrNotApprover
	}
	e.decided = true
	out := Denied
	if approve {
		out = Approved
	}
	e.done <- Result{Outcome: out, By: by}
	return e.p, nil
}

// List returns the pending calls, oldest first.
func (q *Queue) List() []Pending {
	now := q.now()
	q.mu.Lock()
	out := make([]Pending, 0, len(q.entries))
	for _, e := range q.entries {
		if e.visible && !e.decided {
			p := e.p
			p.Approvers = slices.Clone(p.Approvers)
			p.AgeSeconds = now.Sub(p.Requested).Seconds()
			out = append(out, p)
		}
	}
	q.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Requested.Equal(out[j].Requested) {
			return out[i].Requested.Before(out[j].Requested)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Len is how many calls hold a place (listed or not yet published).
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.entries)
}

// idPrefix and idHex make the id form: "apv-" and 16 lowercase hex digits.
const (
	idPrefix = "apv-"
	idHex    = 16
)

func newID() (string, error) {
	var b [idHex / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return idPrefix + hex.EncodeToString(b[:]), nil
}

// ValidID reports whether s has the form of an approval id. The admin API
// checks ids before it looks them up, so that nothing else reaches the
// queue or the log.
func ValidID(s string) bool {
	if len(s) != len(idPrefix)+idHex || s[:len(idPrefix)] != idPrefix {
		return false
	}
	for _, c := range s[len(idPrefix):] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// MaxNameLen bounds the name of the person deciding.
const MaxNameLen = 128

// CheckName checks who decides, as given to the admin API: it is written
// to the audit log and echoed to the agent, so it is a short token of
// letters, digits and ._@:/+- (a user name, an e-mail address, a
// Kubernetes user such as system:serviceaccount:ns:name).
func CheckName(s string) error {
	if s == "" {
		return errors.New("say who decides: by=<name>")
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("the name is longer than %d bytes", MaxNameLen)
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.' || c == '_' || c == '@' || c == ':' || c == '/' || c == '+' || c == '-':
		default:
			return fmt.Errorf("the name may hold only letters, digits and ._@:/+- (found %q)", c)
		}
	}
	return nil
}
