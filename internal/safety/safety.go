// Package safety enforces content-safety floors on upstream responses. It
// reads the annotations Azure AI Content Safety attaches to Azure OpenAI and
// Foundry responses — prompt_filter_results (prompt_annotations in early
// preview API versions) for the prompt, choices[].content_filter_results for
// the completion, and error.innererror.content_filter_result when Azure
// itself refused — and decides whether the router lets the response reach
// the agent.
//
// A category finding blocks when its severity is above the configured floor;
// jailbreak and indirect-attack detections block unless disabled; a
// requirePromptShields policy blocks responses that carry no Prompt Shields
// annotation at all. The package is pure: bytes in, a Verdict out.
package safety

import (
	"fmt"
	"strings"
	"sync"

	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/tidwall/gjson"
)

// Categories are the harm categories with severity levels, under their
// Azure wire names.
var Categories = []string{"hate", "self_harm", "sexual", "violence"}

// Finding is one annotation that matters: a category at some severity, or a
// detection (jailbreak, indirect_attack, protected material).
type Finding struct {
	// Where is "prompt" or "completion".
	Where    string
	Category string
	// Severity is set for harm categories (safe, low, medium, high).
	Severity string
	Detected bool
	Filtered bool
	// Blocking is true when this finding alone blocks under the policy.
	Blocking bool
}

// Verdict is the outcome of checking a response or a stream event.
type Verdict struct {
	Block bool
	// Reason says why, naming the category, for the agent and the audit log.
	Reason   string
	Findings []Finding
}

// Policy is a compiled ContentSafety section.
type Policy struct {
	floors         map[string]int
	requireShields bool
	blockJailbreak bool
	blockIndirect  bool
}

// NewPolicy compiles cs; nil applies the defaults (floor Low everywhere,
// detections block, shields not required).
func NewPolicy(cs *routerconfig.ContentSafety) *Policy {
	var c routerconfig.ContentSafety
	if cs != nil {
		c = *cs
	}
	return &Policy{
		floors: map[string]int{
			"hate": c.Hate.Floor().Rank(), "self_harm": c.SelfHarm.Floor().Rank(),
			"sexual": c.Sexual.Floor().Rank(), "violence": c.Violence.Floor().Rank(),
		},
		requireShields: c.RequirePromptShields,
		blockJailbreak: cs.JailbreakBlocked(),
		blockIndirect:  cs.IndirectAttackBlocked(),
	}
}

// RequiresShields reports whether responses must carry Prompt Shields
// annotations.
func (p *Policy) RequiresShields() bool { return p.requireShields }

func severityRank(s string) int {
	switch strings.ToLower(s) {
	case "safe":
		return 0
	case "low":
		return 1
	case "medium":
		return 2
	case "high":
		return 3
	}
	return -1
}

// scan reads one content_filter_results object into v. It reports whether the
// object carries a Prompt Shields (jailbreak) annotation.
func (p *Policy) scan(where string, r gjson.Result, v *Verdict) (shielded bool) {
	if !r.IsObject() {
		return false
	}
	r.ForEach(func(k, cat gjson.Result) bool {
		if cat.IsObject() && p.category(where, k.Str, cat, v) {
			shielded = true
		}
		return true
	})
	return shielded
}

// category reads one annotation, {"filtered":…,"detected":…,"severity":…},
// into v, in one pass over its members (the first of a repeated member
// counts, as with gjson.Get). It reports whether it is a Prompt Shields
// annotation.
func (p *Policy) category(where, name string, cat gjson.Result, v *Verdict) (shielded bool) {
	f := Finding{Where: where, Category: name}
	var seen uint8
	cat.ForEach(func(k, val gjson.Result) bool {
		switch {
		case k.Str == "filtered" && seen&1 == 0:
			seen |= 1
			f.Filtered = val.Type == gjson.True
		case k.Str == "detected" && seen&2 == 0:
			seen |= 2
			f.Detected = val.Type == gjson.True
		case k.Str == "severity" && seen&4 == 0:
			seen |= 4
			f.Severity = strings.ToLower(val.Str)
		}
		return true
	})
	if floor, ok := p.floors[name]; ok {
		rank := severityRank(f.Severity)
		f.Blocking = rank > floor || f.Filtered
		if rank <= 0 && !f.Filtered {
			return false // safe: nothing to record
		}
	} else {
		f.Severity = ""
		switch name {
		case "jailbreak":
			shielded = true
			f.Blocking = f.Detected && (p.blockJailbreak || f.Filtered)
		case "indirect_attack":
			shielded = true
			f.Blocking = f.Detected && (p.blockIndirect || f.Filtered)
		default: // protected material, profanity, custom blocklists
			f.Blocking = f.Filtered
		}
		if !f.Detected && !f.Filtered {
			return shielded
		}
	}
	v.Findings = append(v.Findings, f)
	if f.Blocking && !v.Block {
		v.Block = true
		if f.Severity != "" {
			v.Reason = fmt.Sprintf("content safety: %s %s severity %s is above the floor", where, name, f.Severity)
		} else {
			v.Reason = fmt.Sprintf("content safety: %s %s detected", where, name)
		}
	}
	return shielded
}

// members are the top-level members of a body or event that the checks
// read, found in one pass (the first of a repeated member, as with
// gjson.Get).
type members struct {
	promptFilter, promptAnnotations, choices, err, typ gjson.Result
}

// read fills m from doc.
func (m *members) read(doc gjson.Result) {
	*m = members{}
	doc.ForEach(func(k, val gjson.Result) bool {
		var dst *gjson.Result
		switch k.Str {
		case "prompt_filter_results":
			dst = &m.promptFilter
		case "prompt_annotations":
			dst = &m.promptAnnotations
		case "choices":
			dst = &m.choices
		case "error":
			dst = &m.err
		case "type":
			dst = &m.typ
		default:
			return true
		}
		if !dst.Exists() {
			*dst = val
		}
		return true
	})
}

// annotations reads every content-safety annotation of a body or event.
func (p *Policy) annotations(m *members, v *Verdict) (shielded bool) {
	shielded = p.prompt(m.promptFilter, v)
	if p.prompt(m.promptAnnotations, v) {
		shielded = true
	}
	m.choices.ForEach(func(_, c gjson.Result) bool {
		p.choice(c, v)
		return true
	})
	// Azure's refusal: error.innererror.content_filter_result.
	if inner := m.err.Get("innererror.content_filter_result"); inner.Exists() {
		if p.scan("prompt", inner, v) {
			shielded = true
		}
	}
	return shielded
}

// prompt reads a prompt_filter_results (or prompt_annotations) array.
func (p *Policy) prompt(results gjson.Result, v *Verdict) (shielded bool) {
	results.ForEach(func(_, pr gjson.Result) bool {
		if p.scan("prompt", pr.Get("content_filter_results"), v) {
			shielded = true
		}
		return true
	})
	return shielded
}

// choice reads a choice's completion annotations and its finish reason.
func (p *Policy) choice(c gjson.Result, v *Verdict) {
	var results, finish gjson.Result
	c.ForEach(func(k, val gjson.Result) bool {
		switch {
		case k.Str == "content_filter_results" && !results.Exists():
			results = val
		case k.Str == "finish_reason" && !finish.Exists():
			finish = val
		}
		return true
	})
	p.scan("completion", results, v)
	if finish.Str == "content_filter" && !v.Block {
		v.Block = true
		v.Reason = "content safety: the upstream filtered the completion"
	}
}

// CheckBody checks a complete response body (success or error).
func (p *Policy) CheckBody(body []byte) Verdict {
	var v Verdict
	if !gjson.ValidBytes(body) {
		return v
	}
	var m members
	m.read(gjson.ParseBytes(body))
	shielded := p.annotations(&m, &v)
	if p.requireShields && !shielded && !v.Block {
		v.Block = true
		v.Reason = "content safety: the response carries no Prompt Shields annotation and requirePromptShields is set"
	}
	return v
}

// StreamCheck checks a stream event by event. Azure sends the prompt
// annotations in an early chunk with no choices, then completion annotations
// on content chunks.
type StreamCheck struct {
	p        *Policy
	shielded bool
}

// eventMembers holds the members of the events being checked: kept off the
// stack (a stream's checks run at the bottom of a deep one) and off the
// checker (which lives as long as its stream, a thousand at once).
var eventMembers = sync.Pool{New: func() any { return new(members) }}

// NewStream starts checking one stream.
func (p *Policy) NewStream() *StreamCheck { return &StreamCheck{p: p} }

// Event checks one event's data. A blocking verdict means the stream must
// end here: nothing from this event on reaches the agent.
func (s *StreamCheck) Event(data []byte) Verdict {
	var v Verdict
	if len(data) == 0 || data[0] != '{' || !gjson.ValidBytes(data) {
		return v
	}
	m := eventMembers.Get().(*members)
	defer func() {
		*m = members{} // let go of the event's parsed copy
		eventMembers.Put(m)
	}()
	m.read(gjson.ParseBytes(data))
	if s.p.annotations(m, &v) {
		s.shielded = true
	}
	if !v.Block && s.p.requireShields && !s.shielded && carriesContent(m) {
		v.Block = true
		v.Reason = "content safety: the stream produced content before any Prompt Shields annotation and requirePromptShields is set"
	}
	return v
}

// carriesContent reports whether a chunk would show the agent model output.
func carriesContent(m *members) bool {
	found := false
	m.choices.ForEach(func(_, c gjson.Result) bool {
		d := c.Get("delta")
		if d.Get("content").Str != "" || d.Get("tool_calls").Exists() || c.Get("text").Str != "" {
			found = true
			return false
		}
		return true
	})
	if t := m.typ.Str; t == "content_block_delta" || t == "response.output_text.delta" {
		found = true
	}
	return found
}
