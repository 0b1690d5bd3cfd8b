package audit

import "time"

// DefaultCommitWindow is the commit window kars-router uses: long enough to
// gather several entries per fdatasync at a few thousand appends a second,
// short next to the time of an inference call.
const DefaultCommitWindow = 2 * time.Millisecond

// Defaults for the batch size at which a batch stops waiting.
const (
	defaultCommitMaxEntries = 16
	defaultCommitMaxBytes   = 128 << 10
)

// pacer decides when the sealer commits the batch that is filling: at once,
// or a little later so that one write and one fdatasync cover more entries.
//
// A sync costs the same for one entry as for a hundred (on the virtual disks
// kars runs on, ~165 µs of CPU), so when appends arrive faster than syncs
// complete it pays to wait for the next ones; when they arrive one at a time
// waiting only adds latency. The pacer tells the two apart with Little's
// law: the rate at which other callers append is the number of entries an
// append finds already waiting, divided by how long entries wait. A caller
// that appends again as soon as its previous entry is durable finds nothing
// waiting, so it is a lone caller however fast it goes, and its appends
// sync at once.
//
// The pacer holds no lock of its own: the Writer calls it under its mutex.
// Times are offsets on the Writer's monotonic clock.
type pacer struct {
	window     time.Duration // 0: never wait
	maxEntries int
	maxBytes   int

	// others is the moving average of the number of entries an append
	// finds staged or being committed; latency is the moving average of
	// the time from an append to its acknowledgement, in nanoseconds.
	others, latency float64
	last            time.Duration // arrival of the latest append
	// burst is the moving average of the gap, in nanoseconds, between
	// appends that join a batch already filling (see arrive for the first
	// entry of a batch). Under independent load it
	// is the mean gap Little's law implies; for a closed group of callers
	// (each appends again the moment its entry is durable) it is far
	// shorter, because the group re-appends together right after a sync and
	// then nobody does until the next one.
	burst float64
}

// pending describes the batch that is filling.
type pending struct {
	first, last time.Duration // arrivals of its first and latest entries
	lead        time.Duration // time from the append before it to its first entry
	entries     int
	bytes       int
}

// quietGaps is how many expected gaps between appends without one end a
// wait: arrivals are irregular, and a shorter spell would end most waits
// early at a few thousand appends a second.
const quietGaps = 4

// minQuiet is the shortest quiet spell worth waiting for, about one sync on
// the disks kars runs on. Entries expected this often find the sealer still
// busy with the previous sync and batch up without a wait, and a timer this
// short oversleeps: when the process
// has nothing else to run, Go's timers wake up to a millisecond late.
const minQuiet = 500 * time.Microsecond

// ewmaShift sets how fast the averages follow a change: each new sample
// carries 1/8 of the weight.
const ewmaShift = 3

func ewma(avg, sample float64) float64 { return avg + (sample-avg)/(1<<ewmaShift) }

// arrive records an append at now that found waiting entries already
// staged or being committed; joining says whether the batch it goes into
// already has entries. It returns the time since the previous append.
func (p *pacer) arrive(now time.Duration, waiting int, joining bool) (gap time.Duration) {
	gap = now - p.last
	p.last = now
	p.others = ewma(p.others, float64(waiting))
	switch {
	case joining:
		p.burst = ewma(p.burst, float64(gap))
	case p.latency > 0 && p.others > 0:
		// The first entry of a batch follows a gap that may be a sync
		// long (a closed group) or an idle spell; counting it as at most
		// the gap Little's law implies lets the estimate recover after a
		// burst of concurrent appends left it short.
		p.burst = ewma(p.burst, min(float64(gap), p.latency/p.others))
	}
	return gap
}

// acked records that n entries became durable at now, having arrived at
// times whose sum is arrivals.
func (p *pacer) acked(now time.Duration, n int, arrivals time.Duration) {
	if n > 0 {
		p.latency = ewma(p.latency, float64(time.Duration(n)*now-arrivals)/float64(n))
	}
}

// full reports whether a batch is big enough that it should not wait.
func (p *pacer) full(entries, bytes int) bool {
	return entries >= p.maxEntries || bytes >= p.maxBytes
}

// due returns the time at which the batch b should be sealed; a time not
// after b's first arrival means at once. A batch waits only while more
// entries are expected: at least one within the window, at the rate other
// callers have been appending. It stops waiting when it is full, when its
// first entry is a window old, or when no entry has arrived for quietGaps
// expected gaps (the callers went quiet, or are all waiting for this batch).
// The expected gap is the shorter of Little's law's and the gap seen between
// entries joining a batch: a closed group of callers, which all append
// within microseconds of a sync and then wait, is not held for the longer
// gap its rate implies; a quiet spell shorter than minQuiet is not waited
// for at all. A lone append (one that follows a quiet spell) does
// not wait at all.
func (p *pacer) due(b pending) time.Duration {
	if p.window <= 0 || p.full(b.entries, b.bytes) || p.latency <= 0 {
		return b.first
	}
	rate := p.others / p.latency // appends by other callers per nanosecond
	if rate*float64(p.window) < 1 {
		return b.first
	}
	quiet := time.Duration(quietGaps / rate)
	if p.burst > 0 {
		quiet = min(quiet, time.Duration(quietGaps*p.burst))
	}
	if quiet < minQuiet {
		return b.first
	}
	if b.entries == 1 && b.lead > quiet {
		return b.first
	}
	return min(b.first+p.window, b.last+quiet)
}
