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
		if !cat.IsObject() {
			return true
		}
		name := k.Str
		f := Finding{Where: where, Category: name, Filtered: cat.Get("filtered").Type == gjson.True,
			Detected: cat.Get("detected").Type == gjson.True}
		if floor, ok := p.floors[name]; ok {
			f.Severity = strings.ToLower(cat.Get("severity").Str)
			rank := severityRank(f.Severity)
			f.Blocking = rank > floor || f.Filtered
			if rank <= 0 && !f.Filtered {
				return true // safe: nothing to record
			}
		} else {
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
				return true
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
		return true
	})
	return shielded
}

// annotations scans the prompt and completion annotations of one JSON value
// (a response body or a stream chunk) and reports whether shields were seen.
func (p *Policy) annotations(doc gjson.Result, v *Verdict) (shielded bool) {
	for _, key := range []string{"prompt_filter_results", "prompt_annotations"} {
		doc.Get(key).ForEach(func(_, pr gjson.Result) bool {
			if p.scan("prompt", pr.Get("content_filter_results"), v) {
				shielded = true
			}
			return true
		})
	}
	doc.Get("choices").ForEach(func(_, c gjson.Result) bool {
		p.scan("completion", c.Get("content_filter_results"), v)
		if c.Get("finish_reason").Str == "content_filter" && !v.Block {
			v.Block = true
			v.Reason = "content safety: the upstream filtered the completion"
		}
		return true
	})
	// Azure's refusal: error.innererror.content_filter_result.
	if inner := doc.Get("error.innererror.content_filter_result"); inner.Exists() {
		if p.scan("prompt", inner, v) {
			shielded = true
		}
	}
	return shielded
}

// CheckBody checks a complete response body (success or error).
func (p *Policy) CheckBody(body []byte) Verdict {
	var v Verdict
	if !gjson.ValidBytes(body) {
		return v
	}
	doc := gjson.ParseBytes(body)
	shielded := p.annotations(doc, &v)
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

// NewStream starts checking one stream.
func (p *Policy) NewStream() *StreamCheck { return &StreamCheck{p: p} }

// Event checks one event's data. A blocking verdict means the stream must
// end here: nothing from this event on reaches the agent.
func (s *StreamCheck) Event(data []byte) Verdict {
	var v Verdict
	if len(data) == 0 || data[0] != '{' || !gjson.ValidBytes(data) {
		return v
	}
	doc := gjson.ParseBytes(data)
	if s.p.annotations(doc, &v) {
		s.shielded = true
	}
	if !v.Block && s.p.requireShields && !s.shielded && carriesContent(doc) {
		v.Block = true
		v.Reason = "content safety: the stream produced content before any Prompt Shields annotation and requirePromptShields is set"
	}
	return v
}

// carriesContent reports whether a chunk would show the agent model output.
func carriesContent(doc gjson.Result) bool {
	found := false
	doc.Get("choices").ForEach(func(_, c gjson.Result) bool {
		d := c.Get("delta")
		if d.Get("content").Str != "" || d.Get("tool_calls").Exists() || c.Get("text").Str != "" {
			found = true
			return false
		}
		return true
	})
	if t := doc.Get("type").Str; t == "content_block_delta" || t == "response.output_text.delta" {
		found = true
	}
	return found
}
