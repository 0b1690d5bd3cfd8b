package safety

// The gjson implementation of the checks, as it was before the single-pass
// walker in safety.go replaced it: FuzzWalkerMatchesGJSON holds the two to
// the same verdicts.

import (
	"fmt"
	"strings"
	"sync"

	"github.com/tidwall/gjson"
)

// scan reads one content_filter_results object into v. It reports whether the
// object carries a Prompt Shields (jailbreak) annotation.
func (p *Policy) refScan(where string, r gjson.Result, v *Verdict) (shielded bool) {
	if !r.IsObject() {
		return false
	}
	r.ForEach(func(k, cat gjson.Result) bool {
		if cat.IsObject() && p.refCategory(where, k.Str, cat, v) {
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
func (p *Policy) refCategory(where, name string, cat gjson.Result, v *Verdict) (shielded bool) {
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
type refMembers struct {
	promptFilter, promptAnnotations, choices, err, typ gjson.Result
}

// read fills m from doc.
func (m *refMembers) read(doc gjson.Result) {
	*m = refMembers{}
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
func (p *Policy) refAnnotations(m *refMembers, v *Verdict) (shielded bool) {
	shielded = p.refPrompt(m.promptFilter, v)
	if p.refPrompt(m.promptAnnotations, v) {
		shielded = true
	}
	m.choices.ForEach(func(_, c gjson.Result) bool {
		p.refChoice(c, v)
		return true
	})
	// Azure's refusal: error.innererror.content_filter_result.
	if inner := m.err.Get("innererror.content_filter_result"); inner.Exists() {
		if p.refScan("prompt", inner, v) {
			shielded = true
		}
	}
	return shielded
}

// prompt reads a prompt_filter_results (or prompt_annotations) array.
func (p *Policy) refPrompt(results gjson.Result, v *Verdict) (shielded bool) {
	results.ForEach(func(_, pr gjson.Result) bool {
		if p.refScan("prompt", pr.Get("content_filter_results"), v) {
			shielded = true
		}
		return true
	})
	return shielded
}

// choice reads a choice's completion annotations and its finish reason.
func (p *Policy) refChoice(c gjson.Result, v *Verdict) {
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
	p.refScan("completion", results, v)
	if finish.Str == "content_filter" && !v.Block {
		v.Block = true
		v.Reason = "content safety: the upstream filtered the completion"
	}
}

// CheckBody checks a complete response body (success or error).
func (p *Policy) refCheckBody(body []byte) Verdict {
	var v Verdict
	if !gjson.ValidBytes(body) {
		return v
	}
	var m refMembers
	m.read(gjson.ParseBytes(body))
	shielded := p.refAnnotations(&m, &v)
	if p.requireShields && !shielded && !v.Block {
		v.Block = true
		v.Reason = "content safety: the response carries no Prompt Shields annotation and requirePromptShields is set"
	}
	return v
}

// StreamCheck checks a stream event by event. Azure sends the prompt
// annotations in an early chunk with no choices, then completion annotations
// on content chunks.
type refStreamCheck struct {
	p        *Policy
	shielded bool
}

// eventMembers holds the members of the events being checked: kept off the
// stack (a stream's checks run at the bottom of a deep one) and off the
// checker (which lives as long as its stream, a thousand at once).
var refEventMembers = sync.Pool{New: func() any { return new(refMembers) }}

// NewStream starts checking one stream.
func (p *Policy) refNewStream() *refStreamCheck { return &refStreamCheck{p: p} }

// Event checks one event's data. A blocking verdict means the stream must
// end here: nothing from this event on reaches the agent.
func (s *refStreamCheck) Event(data []byte) Verdict {
	var v Verdict
	if len(data) == 0 || data[0] != '{' || !gjson.ValidBytes(data) {
		return v
	}
	m := refEventMembers.Get().(*refMembers)
	defer func() {
		*m = refMembers{} // let go of the event's parsed copy
		refEventMembers.Put(m)
	}()
	m.read(gjson.ParseBytes(data))
	if s.p.refAnnotations(m, &v) {
		s.shielded = true
	}
	if !v.Block && s.p.requireShields && !s.shielded && refCarriesContent(m) {
		v.Block = true
		v.Reason = "content safety: the stream produced content before any Prompt Shields annotation and requirePromptShields is set"
	}
	return v
}

// carriesContent reports whether a chunk would show the agent model output.
func refCarriesContent(m *refMembers) bool {
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
