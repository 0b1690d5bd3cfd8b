package router

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/kars-io/kars/internal/approval"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/routerconfig"
)

// Approvals a restart cut off. A held call lives in the router's memory
// and in the agent's open request; a router that stops without ending it
// (killed, crashed, its node lost — a clean stop ends its held calls
// first, see Serve — or unable to write the outcome as it stopped) leaves
// the call's pending entry in the audit log with no outcome. The agent's request died with that process, and an approved
// call goes on only once its outcome entry is durable, so such a call
// never ran. On start, before it serves anything, the router
// says so in the log: for each pending entry without an outcome it appends
// the outcome a call abandoned in a running router gets (decision deny,
// attrs.approval=abandoned, attrs.approval_id), marked
// attrs.abandoned_because=router_restart, with attrs.pending_seq naming
// the pending entry.
//
// Which entries are read. Every life of the router starts with the log's
// audit:open entry and closes out the lives before it before it serves,
// so only the life that just ended can hold pending entries without an
// outcome — or an earlier one, when the lives after it ended during their
// own close-out, before serving. The scan walks back from the head through
// lives that served nothing (only log entries and close-outs), and stops
// in the first life that served: there, only calls still held when the
// process died lack an outcome, and a call is held at most
// routerconfig.MaxApprovalTimeout, so only the last hour (plus
// closeOutSlack) before that life's last entry is read. closeOutMaxEntries
// bounds the walk whatever the log holds. Outcomes come after their
// pending entries, so a walk from the head has seen a call's outcome, if
// there is one, by the time it reaches the pending entry; a walk that
// stops early (a damaged line, the bound) closes out only what it proved.

const (
	// restartAbandoned is attrs.abandoned_because of a close-out.
	restartAbandoned = "router_restart"
	// closeOutSlack widens the window for clocks that moved between
	// the pending entry and the life's last entry.
	closeOutSlack = time.Minute
	// closeOutMaxEntries bounds the entries one start reads: reading
	// and checking an entry took about 6 µs on a shared 2-core machine,
	// so about 6 s at most, an hour of 290 calls a second.
	closeOutMaxEntries = 1 << 20
)

// closeOutScan decides, from the log's entries newest first, which pending
// entries have no outcome. It does no I/O but its log lines: Serve feeds
// it audit.ReadBackward.
type closeOutScan struct {
	log    *slog.Logger
	window time.Duration
	max    int

	outcomes map[string]bool // approval ids with an outcome entry
	// decided are the outcome entries read, newest first: calls that
	// ended in the lives read, which a late decision should find ended.
	decided []approval.Pending
	open    map[string]audit.Entry // pending entries without one, by id
	read    int
	lives   int // audit:open entries passed
	lifeEnd time.Time
	served  bool // the life being read served calls
	// truncated is set when the walk stopped at max with more to read.
	truncated bool
}

func newCloseOutScan(log *slog.Logger) *closeOutScan {
	return &closeOutScan{log: log, window: routerconfig.MaxApprovalTimeout + closeOutSlack, max: closeOutMaxEntries,
		outcomes: map[string]bool{}, open: map[string]audit.Entry{}}
}

// add takes the next older entry and reports whether to read on.
func (s *closeOutScan) add(e audit.Entry) bool {
	if s.read >= s.max {
		s.truncated = true
		return false
	}
	s.read++
	if e.Action == audit.ActionOpen {
		// The start of a life. The first one read is this process's own.
		if s.lives > 0 && s.served {
			return false
		}
		s.lives++
		s.served, s.lifeEnd = false, time.Time{}
		return true
	}
	if s.lives == 0 {
		// This process's own life: nothing before the close-out but the
		// log's entries (audit:recover).
		return true
	}
	if s.lifeEnd.IsZero() {
		s.lifeEnd = e.Time
	}
	inWindow := !e.Time.Before(s.lifeEnd.Add(-s.window))
	if !inWindow && s.served {
		return false
	}
	id, isApproval := e.Attrs["approval_id"]
	switch {
	case isApproval && e.Attrs["approval"] == "pending":
		s.served = true
		if inWindow && !s.outcomes[id] {
			s.pending(e, id)
		}
	case isApproval:
		if !s.outcomes[id] && approval.ValidID(id) {
			s.decided = append(s.decided, approval.Pending{ID: id, Action: e.Action, Rule: e.Rule})
		}
		s.outcomes[id] = true
		if e.Attrs["abandoned_because"] != restartAbandoned {
			s.served = true
		}
	case isLogEntry(e):
	default:
		s.served = true
	}
	return true
}

// pending keeps e, a pending entry read before any outcome of id, unless
// it is malformed: a close-out repeats its id, and an id or expiry the
// router would not have written is not something to answer for.
func (s *closeOutScan) pending(e audit.Entry, id string) {
	if !approval.ValidID(id) {
		s.log.Warn("audit entry holds a pending approval with a malformed id; not closing it out", "seq", e.Seq, "approval_id", cut(id, 64))
		return
	}
	if _, err := time.Parse(time.RFC3339Nano, e.Attrs["approval_expires"]); err != nil {
		s.log.Warn("audit entry holds a pending approval with a malformed expiry; not closing it out", "seq", e.Seq, "approval_id", id,
			"approval_expires", cut(e.Attrs["approval_expires"], 64))
		return
	}
	if _, dup := s.open[id]; dup {
		// Two pending entries with one id: the newer is kept, one outcome
		// answers both.
		return
	}
	s.open[id] = e
}

// isLogEntry reports whether e is one the log writes about itself.
func isLogEntry(e audit.Entry) bool {
	return e.Action == audit.ActionOpen || e.Action == audit.ActionRecover
}

// closeOuts are the outcome records for the pending entries without one,
// oldest pending entry first.
func (s *closeOutScan) closeOuts() []audit.Record {
	pend := slices.SortedFunc(maps.Values(s.open), func(a, b audit.Entry) int {
		if a.Seq < b.Seq {
			return -1
		}
		if a.Seq > b.Seq {
			return 1
		}
		return 0
	})
	out := make([]audit.Record, 0, len(pend))
	for _, p := range pend {
		out = append(out, closeOutRecord(p))
	}
	return out
}

// closeOutRecord is the outcome of pending entry p: the call, its rule and
// payload hash as p has them, and the outcome of a call abandoned while
// held. Latency is 0: when the old process died is not known.
func closeOutRecord(p audit.Entry) audit.Record {
	rec := p.Record
	id := p.Attrs["approval_id"]
	rec.Attrs = maps.Clone(p.Attrs)
	delete(rec.Attrs, "approval_expires")
	rec.Attrs["approval"] = string(approval.Abandoned)
	rec.Attrs["abandoned_because"] = restartAbandoned
	rec.Attrs["pending_seq"] = strconv.FormatUint(p.Seq, 10)
	rec.Decision = "deny"
	rec.Reason = "kars-router restarted before approval " + id + " had an outcome; the agent's request ended with the old process, so the call was not forwarded"
	rec.Latency = 0
	return rec
}

// closeOutApprovals appends the outcome of every pending approval entry in
// the log in dir that has none (see above), through sink, and returns the
// calls it closed out. It also returns, oldest first, the calls whose
// outcome it read (the previous life's decided, timed-out and stopped
// calls): the queue remembers both as ended, so that a late decision on
// one is "already decided" whether the last router crashed or stopped
// cleanly. An error means an outcome could not be written: the router does
// not start, as it serves nothing it cannot audit. A log it cannot read to
// the end of the window is logged, not fatal: what it read is closed out.
func closeOutApprovals(ctx context.Context, dir string, sink audit.Sink, log *slog.Logger) (closed, decided []approval.Pending, err error) {
	s := newCloseOutScan(log)
	if err := audit.ReadBackward(dir, s.add); err != nil {
		log.Error("reading the audit log for approvals a restart cut off stopped early; closing out those found", "err", err)
	}
	if s.truncated {
		log.Warn("stopped reading the audit log for approvals a restart cut off at the bound; older pending entries are not checked", "entries", s.read)
	}
	decided = slices.Clone(s.decided)
	slices.Reverse(decided)
	for _, rec := range s.closeOuts() {
		id := rec.Attrs["approval_id"]
		if _, err := sink.Append(ctx, rec); err != nil {
			return closed, decided, fmt.Errorf("recording that approval %s ended with the previous router: %w", id, err)
		}
		log.Warn("approval closed out: the router restarted while the call awaited a decision; the call did not run",
			"approval_id", id, "action", rec.Action, "pending_seq", rec.Attrs["pending_seq"])
		closed = append(closed, approval.Pending{ID: id, Action: rec.Action, Rule: rec.Rule})
	}
	return closed, decided, nil
}
