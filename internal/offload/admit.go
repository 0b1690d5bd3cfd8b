package offload

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Pairing is what admission needs to know of an offload pairing.
type Pairing struct {
	Name         string
	Capabilities []string
	Slots        int
	ExpiresAt    time.Time
	Revoked      bool
	// RevokedAt is when the controller saw the revocation, for the
	// message; zero when unknown.
	RevokedAt time.Time
	// PerOffload caps one offload's tokens (tokenBudget.perRequest) and
	// Daily all offloads' in a UTC day (tokenBudget.daily); zero means no
	// bound.
	PerOffload, Daily int64
	// Used is what offloads that ended used in the UTC day Day.
	Used int64
	Day  string
	// HasTemplate reports spec.offload; TTL is its ttlSeconds.
	HasTemplate bool
	TTL         time.Duration
}

// Live is an offload that holds a slot.
type Live struct {
	ID, Request string
	// Tokens is its allocation, held against the daily budget until it
	// ends and its real use is settled.
	Tokens int64
}

// DefaultTTL is an offload's life when the template names none.
const DefaultTTL = time.Hour

// Decision is what admission decided.
type Decision struct {
	// Refusal is set when the request is refused; nothing may be created.
	Refusal *Error
	// Existing names the offload a retried request already created.
	Existing string
	// Tokens is the offload's allocation (0: no budget applies) and TTL
	// its life.
	Tokens int64
	TTL    time.Duration
}

// Day is the UTC day key budgets use.
func Day(t time.Time) string { return t.UTC().Format("2006-01-02") }

// UsedOn returns what p's offloads used on day: Used when p.Day is that
// day, else nothing (the day rolled over).
func (p Pairing) UsedOn(day string) int64 {
	if p.Day == day {
		return p.Used
	}
	return 0
}

// Reserved sums the live offloads' allocations.
func Reserved(live []Live) int64 {
	var n int64
	for _, l := range live {
		n += l.Tokens
	}
	return n
}

// Admit decides an offload request of p's peer, given the offloads that
// hold its slots. The order is the order a person would check: is the
// pairing still good, may it offload at all, is this a retry, is there a
// free slot, is there budget left. Each refusal says what to do next.
// It is pure.
func Admit(p Pairing, live []Live, req *Request, now time.Time) Decision {
	refuse := func(code, format string, a ...any) Decision {
		return Decision{Refusal: &Error{Code: code, Message: fmt.Sprintf(format, a...)}}
	}
	switch {
	case p.Revoked:
		when := ""
		if !p.RevokedAt.IsZero() {
			when = " at " + p.RevokedAt.UTC().Format(time.RFC3339)
		}
		return refuse(CodeRevoked, "the pairing %s was revoked by the cluster's operator%s; nothing was created. Ask the operator for a new pairing token", p.Name, when)
	case !now.Before(p.ExpiresAt):
		return refuse(CodeExpired, "the pairing %s expired at %s; nothing was created. Ask the operator for a new pairing token", p.Name, p.ExpiresAt.UTC().Format(time.RFC3339))
	case !slices.Contains(p.Capabilities, "offload"):
		return refuse(CodeCapability, "the pairing %s grants %s, not offload; nothing was created. The operator can mint a token with --capabilities offload", p.Name, orNone(p.Capabilities))
	case !p.HasTemplate:
		return refuse(CodeNoTemplate, "the pairing %s has no offload template (spec.offload), so the cluster does not know what sandbox to create; nothing was created. Ask the operator to set it", p.Name)
	}
	for _, l := range live {
		if l.Request == req.ID {
			return Decision{Existing: l.ID, Tokens: l.Tokens}
		}
	}
	if len(live) >= p.Slots {
		ids := make([]string, len(live))
		for i, l := range live {
			ids[i] = l.ID
		}
		return refuse(CodeSlots, "the pairing %s holds %d of %d offload slots (%s); nothing was created. Acknowledge a finished offload (kars_offload_result) or wait for one to end", p.Name, len(live), p.Slots, strings.Join(ids, ", "))
	}
	var tokens int64
	if p.Daily > 0 {
		day := Day(now)
		used, reserved := p.UsedOn(day), Reserved(live)
		left := p.Daily - used - reserved
		if left <= 0 {
			return refuse(CodeBudget, "the pairing %s has spent its daily budget of %d tokens (%d used today, %d held by live offloads); nothing was created. It resets at 00:00 UTC, or when live offloads end with tokens to spare", p.Name, p.Daily, used, reserved)
		}
		// A fair share of what is left among the free slots: without a
		// per-offload cap, the first offload would otherwise hold the
		// whole day's remainder and starve the other slots.
		tokens = max(1, left/int64(p.Slots-len(live)))
	}
	if p.PerOffload > 0 && (tokens == 0 || p.PerOffload < tokens) {
		tokens = p.PerOffload
	}
	if l := req.Limits; l != nil && l.MaxTokens > 0 && (tokens == 0 || l.MaxTokens < tokens) {
		tokens = l.MaxTokens
	}
	ttl := p.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if l := req.Limits; l != nil && l.TTLSeconds > 0 {
		ttl = min(ttl, time.Duration(l.TTLSeconds)*time.Second)
	}
	// An offload never outlives its pairing.
	ttl = min(ttl, p.ExpiresAt.Sub(now).Truncate(time.Second))
	return Decision{Tokens: tokens, TTL: ttl}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "no capability"
	}
	return strings.Join(s, ", ")
}

// MayHandoff refuses a handoff when the pairing does not grant it.
func MayHandoff(p Pairing) *Error {
	if !slices.Contains(p.Capabilities, "handoff") {
		return &Error{Code: CodeCapability, Message: fmt.Sprintf("the pairing %s grants %s, not handoff; the offload keeps running. The operator can mint a token with --capabilities offload,handoff", p.Name, orNone(p.Capabilities))}
	}
	return nil
}
