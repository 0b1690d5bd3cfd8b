// Package policy decides whether the agent may reach a destination
// (host and port), in the order the sandbox contract fixes:
//
//  1. blocklist — a listed domain (or a parent of it) is denied, whatever
//     else says;
//  2. active EgressApprovals — time-bounded grants, expiring by the
//     router's clock;
//  3. the allowlist — spec.networkPolicy.allowedHosts and the verified
//     allowlist artifact (exact names, "*." wildcards, ports);
//  4. Learn mode — anything else is allowed and recorded;
//  5. otherwise denied.
//
// An allowed destination then goes to the governance engine as the action
// egress:<host>:<port> (Govern), so that ToolPolicy rules apply to egress as
// to tools: a matching deny, approval or rate-limit rule refuses it. A
// governance allow does not widen egress — the lists above are the grant.
//
// Decide is pure (the clock is an argument) and allocates nothing; reasons
// are constants and the matched rule or domain is a string the lists
// already hold.
package policy

import (
	"net/netip"
	"strconv"
	"time"

	"github.com/kars-io/kars/internal/egress/allowlist"
	"github.com/kars-io/kars/internal/egress/dest"
	"github.com/kars-io/kars/internal/governance"
)

// Mode is the sandbox's egress mode.
type Mode uint8

// The modes of KarsSandbox spec.networkPolicy.egressMode.
const (
	// Strict allows only approved and allowlisted destinations.
	Strict Mode = iota
	// Learn allows every destination the blocklist does not name, and
	// records it, so that an operator can review and enforce a list.
	Learn
)

// String returns the mode's API name.
func (m Mode) String() string {
	if m == Learn {
		return "Learn"
	}
	return "Strict"
}

// Step names the step that decided.
type Step uint8

// The decision steps, in order.
const (
	StepInvalid Step = iota
	StepAddress
	StepBlocklist
	StepApproval
	StepAllowlist
	StepLearn
	StepDefault
	StepGovernance
)

var stepNames = [...]string{"invalid", "address", "blocklist", "approval", "allowlist", "learn", "default", "governance"}

// String returns the step's name as audited.
func (s Step) String() string {
	if int(s) < len(stepNames) {
		return stepNames[s]
	}
	return "unknown"
}

// Decision is the outcome for one destination.
type Decision struct {
	Allow bool
	Step  Step
	// Rule names what decided: an allowlist or approval rule's name, the
	// blocklist's version, a governance rule.
	Rule string
	// Matched is the listed domain that matched (blocklist).
	Matched string
	Reason  string
	// Expires is when the allowing rule stops allowing (an approval's
	// expiry); zero when it does not expire.
	Expires time.Time
	// Verdict is the governance verdict when Step is StepGovernance.
	Verdict governance.Verdict
}

// Reasons are constants so that deciding never allocates.
const (
	ReasonInvalidHost = "not a valid host name or address"
	ReasonBlocked     = "the destination is on the blocklist"
	ReasonApproved    = "an active EgressApproval allows it"
	ReasonAllowlisted = "the allowlist allows it"
	ReasonLearn       = "Learn mode allows and records every destination the blocklist does not name"
	ReasonNotListed   = "no allowlist entry or active EgressApproval allows this host and port (egressMode Strict)"
	ReasonAddress     = "the address is in a range the router never connects to for the agent"
	ReasonPort        = "port 0 is not a destination"
)

// Blocklist is the blocklist in force (blocklist.Loader, blocklist.Set).
type Blocklist interface {
	Contains(host string) (matched string, ok bool)
}

// Policy is one compiled egress policy. It is immutable; build a new one
// when the config changes.
type Policy struct {
	Mode Mode
	// Blocklist may be nil (no blocklist).
	Blocklist Blocklist
	// BlocklistRule names the blocklist in decisions (e.g. its version).
	BlocklistRule string
	Approvals     *allowlist.List
	Allowlist     *allowlist.List
}

// Decide applies steps 1–5 to host (canonical, see dest.Host) and port at
// now.
func (p *Policy) Decide(host string, port uint16, now time.Time) Decision {
	if port == 0 {
		return Decision{Step: StepInvalid, Reason: ReasonPort}
	}
	return p.decide(host, port, now, false)
}

// DecideHost is Decide on any port: whether some connection to host could
// be allowed. The DNS stub answers only such names.
func (p *Policy) DecideHost(host string, now time.Time) Decision {
	return p.decide(host, 0, now, true)
}

func (p *Policy) decide(host string, port uint16, now time.Time, anyPort bool) Decision {
	if host == "" {
		return Decision{Step: StepInvalid, Reason: ReasonInvalidHost}
	}
	if looksLikeIP(host) {
		if a, err := netip.ParseAddr(host); err == nil && dest.Refused(a) != "" {
			return Decision{Step: StepAddress, Rule: "refused-range", Reason: ReasonAddress}
		}
	}
	if p.Blocklist != nil {
		if m, ok := p.Blocklist.Contains(host); ok {
			return Decision{Step: StepBlocklist, Rule: p.BlocklistRule, Matched: m, Reason: ReasonBlocked}
		}
	}
	match := func(l *allowlist.List) (*allowlist.Rule, bool) {
		if anyPort {
			return l.MatchHost(host, now)
		}
		return l.Match(host, port, now)
	}
	if r, ok := match(p.Approvals); ok {
		return Decision{Allow: true, Step: StepApproval, Rule: r.Name, Reason: ReasonApproved, Expires: r.Expires}
	}
	if r, ok := match(p.Allowlist); ok {
		return Decision{Allow: true, Step: StepAllowlist, Rule: r.Name, Reason: ReasonAllowlisted, Expires: r.Expires}
	}
	if p.Mode == Learn {
		return Decision{Allow: true, Step: StepLearn, Rule: "learn", Reason: ReasonLearn}
	}
	return Decision{Step: StepDefault, Rule: "default-deny", Reason: ReasonNotListed}
}

func looksLikeIP(h string) bool {
	for i := 0; i < len(h); i++ {
		if c := h[i]; c == ':' || (c < '0' || c > '9') && c != '.' {
			return c == ':'
		}
	}
	return true
}

// Action is the governance action of a destination: egress:<host>:<port>,
// IPv6 hosts in brackets (governance.CheckAction's grammar).
func Action(host string, port uint16) string {
	if !looksLikeIP(host) || !containsColon(host) {
		return "egress:" + host + ":" + strconv.Itoa(int(port))
	}
	return "egress:[" + host + "]:" + strconv.Itoa(int(port))
}

func containsColon(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return true
		}
	}
	return false
}

// Govern passes an allowed decision through the governance engine (a
// behavior.Guard in front of it, in the router) as Action(host, port). A
// rule that matches and does not allow — deny, require approval, rate
// limited, or a quarantine — refuses the destination; when no rule names
// it (Rule empty) the egress decision stands. Denied decisions are
// returned unchanged: the engine cannot widen egress.
func Govern(d Decision, gov governance.DecisionProvider, agent, host string, port uint16) Decision {
	if !d.Allow || gov == nil {
		return d
	}
	g := gov.Decide(&governance.Request{Agent: agent, Action: Action(host, port)})
	if g.Rule == "" || g.Allowed() {
		return d
	}
	return Decision{Step: StepGovernance, Rule: g.Rule, Reason: g.Reason, Verdict: g.Verdict}
}

// NoRuleAllows wraps a governance engine for egress: where no rule matches
// (the engine denies with no rule), it answers an allow without a rule, so
// that an egress connection is not counted as a policy denial by the
// behaviour monitor in front of it. Matching rules decide as they would.
type NoRuleAllows struct{ Next governance.DecisionProvider }

// Decide implements governance.DecisionProvider.
func (n NoRuleAllows) Decide(req *governance.Request) governance.Decision {
	if n.Next == nil {
		return governance.Decision{Verdict: governance.Allow, Reason: "no governance policy"}
	}
	d := n.Next.Decide(req)
	if d.Rule == "" && d.Verdict == governance.Deny {
		return governance.Decision{Verdict: governance.Allow, Reason: "no ToolPolicy rule names this destination"}
	}
	return d
}
