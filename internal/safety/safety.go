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
	"bytes"
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

// The checks read a body or event in one walk: doc walks a JSON text that
// gjson.ValidBytes has accepted, checking the members the checks read where
// they stand and skipping everything else without decoding it (gjson's
// ForEach and Get walked each annotation again for every level it is
// nested in). Member names and strings are compared as gjson reads them
// (escapes decoded); where a member is repeated, the first counts, as with
// gjson.Get, except that every category of an annotation object is read.
// FuzzWalkerMatchesGJSON holds it to the verdicts of the gjson
// implementation it replaced. Values are named by the index of their first
// byte, -1 for none.

// doc is a JSON text already validated by gjson.ValidBytes.
type doc []byte

func (b doc) space(i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// strEnd returns the index past the string whose opening quote is at i.
func (b doc) strEnd(i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// end returns the index past the value that starts at i.
func (b doc) end(i int) int {
	switch b[i] {
	case '"':
		return b.strEnd(i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = b.strEnd(i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	case 't', 'n':
		return i + 4
	case 'f':
		return i + 5
	}
	for i < len(b) && (b[i] >= '0' && b[i] <= '9' || b[i] == '-' || b[i] == '+' || b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		i++
	}
	return i
}

// is reports whether the value at i starts with c.
func (b doc) is(i int, c byte) bool { return i >= 0 && b[i] == c }

// members calls fn with each member's name (raw, between its quotes) and
// the index of its value, for the object at i, in order; fn returns the
// index past the value (b.end of it, when it does not read it). It returns
// the index past the object.
func (b doc) members(i int, fn func(name []byte, val int) int) int {
	i++
	for {
		i = b.space(i)
		if i >= len(b) || b[i] != '"' {
			return i + 1 // past the closing brace
		}
		ke := b.strEnd(i)
		name := b[i+1 : ke-1]
		i = b.space(fn(name, b.space(b.space(ke)+1)))
		if i < len(b) && b[i] == ',' {
			i++
		}
	}
}

// elements calls fn with each element of the array at i, or each member
// value of the object at i (gjson's ForEach over values); fn returns the
// index past the value. Anything else has none. It returns the index past
// the value at i.
func (b doc) elements(i int, fn func(val int) int) int {
	switch {
	case b.is(i, '{'):
		return b.members(i, func(_ []byte, val int) int { return fn(val) })
	case b.is(i, '['):
		for i++; ; {
			i = b.space(i)
			if i >= len(b) || b[i] == ']' {
				return i + 1
			}
			i = b.space(fn(i))
			if i < len(b) && b[i] == ',' {
				i++
			}
		}
	case i < 0:
		return i
	}
	return b.end(i)
}

// get returns the first member named name of the object at i (-1 for none
// or for anything but an object).
func (b doc) get(i int, name string) int {
	out := -1
	if b.is(i, '{') {
		b.members(i, func(n []byte, val int) int {
			if out < 0 && nameIs(n, name) {
				out = val
			}
			return b.end(val)
		})
	}
	return out
}

// path returns what gjson.Get finds at path in the value at i.
func (b doc) path(i int, path string) int {
	if i < 0 {
		return -1
	}
	r := gjson.GetBytes(b[i:b.end(i)], path)
	if !r.Exists() || r.Index <= 0 {
		return -1
	}
	return i + r.Index
}

// str returns the string at i as gjson's Str reads it: decoded, and "" for
// a value that is not a string.
func (b doc) str(i int) string {
	if !b.is(i, '"') {
		return ""
	}
	e := b.strEnd(i)
	if raw := b[i+1 : e-1]; bytes.IndexByte(raw, '\\') < 0 {
		return string(raw)
	}
	return gjson.ParseBytes(b[i:e]).Str
}

// strIs reports whether the value at i reads as s with gjson's Str,
// without a copy.
func (b doc) strIs(i int, s string) bool {
	if !b.is(i, '"') {
		return s == "" // gjson's Str of a missing value or a non-string
	}
	e := b.strEnd(i)
	if raw := b[i+1 : e-1]; bytes.IndexByte(raw, '\\') < 0 {
		return string(raw) == s
	}
	return gjson.ParseBytes(b[i:e]).Str == s
}

// nameIs reports whether a raw member name reads as s.
func nameIs(raw []byte, s string) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw) == s
	}
	return unquote(raw) == s
}

// unquote decodes a raw string with escapes as gjson does.
func unquote(raw []byte) string {
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	return gjson.ParseBytes(q).Str
}

// severityOf ranks the severity string at i as severityRank(strings.ToLower
// of it) does, copying nothing for the plain ASCII spellings Azure sends.
func (b doc) severityOf(i int) int {
	if !b.is(i, '"') {
		return severityRank("")
	}
	raw := b[i+1 : b.strEnd(i)-1]
	var lower [6]byte
	if len(raw) <= len(lower) {
		n := 0
		for _, c := range raw {
			if c >= 0x80 || c == '\\' {
				n = -1
				break
			}
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			lower[n] = c
			n++
		}
		if n >= 0 {
			return severityRank(string(lower[:n]))
		}
	}
	return severityRank(strings.ToLower(b.str(i)))
}

// scan reads one content_filter_results object at r into v. It returns
// the index past it and whether it carries a Prompt Shields (jailbreak)
// annotation.
func (p *Policy) scan(b doc, where string, r int, v *Verdict) (end int, shielded bool) {
	if !b.is(r, '{') {
		if r < 0 {
			return r, false
		}
		return b.end(r), false
	}
	end = b.members(r, func(name []byte, cat int) int {
		if !b.is(cat, '{') {
			return b.end(cat)
		}
		end, sh := p.category(b, where, name, cat, v)
		shielded = shielded || sh
		return end
	})
	return end, shielded
}

// category reads one annotation, {"filtered":…,"detected":…,"severity":…},
// into v, in one pass over its members (the first of a repeated member
// counts, as with gjson.Get). It returns the index past the annotation and
// whether it is a Prompt Shields annotation.
func (p *Policy) category(b doc, where string, rawName []byte, cat int, v *Verdict) (end int, shielded bool) {
	filtered, detected, severity := -1, -1, -1
	end = b.members(cat, func(n []byte, val int) int {
		switch {
		case filtered < 0 && nameIs(n, "filtered"):
			filtered = val
		case detected < 0 && nameIs(n, "detected"):
			detected = val
		case severity < 0 && nameIs(n, "severity"):
			severity = val
		}
		return b.end(val)
	})
	f := Finding{Where: where, Filtered: b.is(filtered, 't'), Detected: b.is(detected, 't')}
	var floor int
	var floored bool
	if bytes.IndexByte(rawName, '\\') < 0 {
		floor, floored = p.floors[string(rawName)]
	} else {
		floor, floored = p.floors[unquote(rawName)]
	}
	if floored {
		rank := b.severityOf(severity)
		f.Blocking = rank > floor || f.Filtered
		if rank <= 0 && !f.Filtered {
			return end, false // safe: nothing to record
		}
		f.Severity = strings.ToLower(b.str(severity))
	}
	if !floored {
		switch {
		case nameIs(rawName, "jailbreak"):
			shielded = true
			f.Blocking = f.Detected && (p.blockJailbreak || f.Filtered)
		case nameIs(rawName, "indirect_attack"):
			shielded = true
			f.Blocking = f.Detected && (p.blockIndirect || f.Filtered)
		default: // protected material, profanity, custom blocklists
			f.Blocking = f.Filtered
		}
		if !f.Detected && !f.Filtered {
			return end, shielded
		}
	}
	name := string(rawName)
	if bytes.IndexByte(rawName, '\\') >= 0 {
		name = unquote(rawName)
	}
	f.Category = name
	v.Findings = append(v.Findings, f)
	if f.Blocking && !v.Block {
		v.Block = true
		if f.Severity != "" {
			v.Reason = fmt.Sprintf("content safety: %s %s severity %s is above the floor", where, name, f.Severity)
		} else {
			v.Reason = fmt.Sprintf("content safety: %s %s detected", where, name)
		}
	}
	return end, shielded
}

// members are the top-level members of a body or event that the checks
// read (the first of a repeated member, as with gjson.Get), by the index of
// their values.
type members struct {
	promptFilter, promptAnnotations, choices, err, typ int
}

// Sections of a body, in the order the checks report them.
const (
	secPromptFilter = iota
	secPromptAnnotations
	secChoices
	nSections
)

// annotations reads every content-safety annotation of a body or event
// into v, in one walk of the document: the prompt annotations and the
// choices are checked where they stand, each into its own section, and the
// sections are joined in a fixed order — prompt_filter_results,
// prompt_annotations, choices, then Azure's refusal — whatever the order of
// the members. It returns the top-level members and whether a Prompt
// Shields annotation was seen.
func (p *Policy) annotations(b doc, v *Verdict) (m members, shielded bool) {
	m = members{-1, -1, -1, -1, -1}
	var sec [nSections]Verdict
	top := b.space(0)
	if b.is(top, '{') {
		b.members(top, func(n []byte, val int) int {
			switch {
			case nameIs(n, "prompt_filter_results"):
				if m.promptFilter < 0 {
					m.promptFilter = val
					end, sh := p.prompt(b, val, &sec[secPromptFilter])
					shielded = shielded || sh
					return end
				}
			case nameIs(n, "prompt_annotations"):
				if m.promptAnnotations < 0 {
					m.promptAnnotations = val
					end, sh := p.prompt(b, val, &sec[secPromptAnnotations])
					shielded = shielded || sh
					return end
				}
			case nameIs(n, "choices"):
				if m.choices < 0 {
					m.choices = val
					return b.elements(val, func(c int) int { return p.choice(b, c, &sec[secChoices]) })
				}
			case nameIs(n, "error"):
				if m.err < 0 {
					m.err = val
				}
			case nameIs(n, "type"):
				if m.typ < 0 {
					m.typ = val
				}
			}
			return b.end(val)
		})
	}
	for i := range sec {
		v.Findings = append(v.Findings, sec[i].Findings...)
		if sec[i].Block && !v.Block {
			v.Block, v.Reason = true, sec[i].Reason
		}
	}
	// Azure's refusal: error.innererror.content_filter_result. Rare, so
	// gjson finds it, with its rules for a path through repeated members.
	if inner := b.path(m.err, "innererror.content_filter_result"); inner >= 0 {
		if _, sh := p.scan(b, "prompt", inner, v); sh {
			shielded = true
		}
	}
	return m, shielded
}

// prompt reads a prompt_filter_results (or prompt_annotations) array at
// results: the first content_filter_results of each element. It returns
// the index past the array and whether a Prompt Shields annotation was
// seen.
func (p *Policy) prompt(b doc, results int, v *Verdict) (end int, shielded bool) {
	end = b.elements(results, func(pr int) int {
		if !b.is(pr, '{') {
			return b.end(pr)
		}
		seen := false
		return b.members(pr, func(n []byte, val int) int {
			if seen || !nameIs(n, "content_filter_results") {
				return b.end(val)
			}
			seen = true
			end, sh := p.scan(b, "prompt", val, v)
			shielded = shielded || sh
			return end
		})
	})
	return end, shielded
}

// choice reads a choice's completion annotations (its first
// content_filter_results) and its finish reason, and returns the index
// past the choice.
func (p *Policy) choice(b doc, c int, v *Verdict) int {
	if !b.is(c, '{') {
		return b.end(c)
	}
	seen, finish := false, -1
	end := b.members(c, func(n []byte, val int) int {
		switch {
		case !seen && nameIs(n, "content_filter_results"):
			seen = true
			end, _ := p.scan(b, "completion", val, v)
			return end
		case finish < 0 && nameIs(n, "finish_reason"):
			finish = val
		}
		return b.end(val)
	})
	if b.strIs(finish, "content_filter") && !v.Block {
		v.Block = true
		v.Reason = "content safety: the upstream filtered the completion"
	}
	return end
}

// CheckBody checks a complete response body (success or error).
func (p *Policy) CheckBody(body []byte) Verdict {
	if !gjson.ValidBytes(body) {
		return Verdict{}
	}
	return p.CheckValidBody(body)
}

// CheckValidBody is CheckBody for a body the caller has already found to
// be valid JSON with gjson.ValidBytes, which it does not check again (the
// router validates an answer once for this check and for its usage).
func (p *Policy) CheckValidBody(body []byte) Verdict {
	var v Verdict
	_, shielded := p.annotations(doc(body), &v)
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
	b := doc(data)
	m, shielded := s.p.annotations(b, &v)
	if shielded {
		s.shielded = true
	}
	if !v.Block && s.p.requireShields && !s.shielded && carriesContent(b, &m) {
		v.Block = true
		v.Reason = "content safety: the stream produced content before any Prompt Shields annotation and requirePromptShields is set"
	}
	return v
}

// carriesContent reports whether a chunk would show the agent model output.
func carriesContent(b doc, m *members) bool {
	found := false
	b.elements(m.choices, func(c int) int {
		d := b.get(c, "delta")
		if !found && (!b.strIs(b.get(d, "content"), "") || b.get(d, "tool_calls") >= 0 || !b.strIs(b.get(c, "text"), "")) {
			found = true
		}
		return b.end(c)
	})
	if t := m.typ; b.strIs(t, "content_block_delta") || b.strIs(t, "response.output_text.delta") {
		found = true
	}
	return found
}
