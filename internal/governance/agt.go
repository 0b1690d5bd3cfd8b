package governance

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The Agent Governance Toolkit (AGT) writes policy profiles in YAML:
//
//	version: "1.0"
//	agent: my-agent
//	policies:
//	  - name: capability-gate
//	    type: capability          # capability | approval | rate_limit
//	    allowed_actions: ["tool:web_search"]
//	    denied_actions: ["shell:*"]
//	    priority: 10
//	  - name: pay-approval
//	    type: approval
//	    actions: ["tool:pay_*"]
//	    min_approvals: 2
//	  - name: search-rate
//	    type: rate_limit
//	    actions: ["tool:web_search"]
//	    max_calls: 30
//	    window: 1m
//	    conditions: {region: [eu, us]}
//
// ParseAGT maps each entry onto kars rules: a capability entry becomes a deny
// rule for denied_actions and an allow rule for allowed_actions, both at the
// entry's priority; an approval entry a require-approval rule; a rate_limit
// entry an allow rule with a token bucket of max_calls per window. Each
// condition key becomes a CEL condition that the argument is present and
// equal to the value (or one of the listed values).
//
// The profile's agent, unless empty or "*", becomes Policy.Agents: requests
// from any other agent id are denied with a reason saying so.
//
// Two semantics differ from the toolkit's own engine, on purpose: AGT takes
// the first matching entry in file order and allows when nothing matches,
// while kars orders by priority, lets deny override allow at equal priority,
// and denies when nothing matches.

// maxAGTBytes bounds a profile's size before parsing.
const maxAGTBytes = 1 << 20

var agtTopKeys = []string{"version", "agent", "policies", "name", "description"}

var agtPolicyKeys = []string{
	"name", "type", "description", "allowed_actions", "denied_actions", "actions",
	"min_approvals", "max_calls", "window", "conditions", "priority", "scope",
}

// ParseAGT converts an AGT YAML profile into a Policy. Problems are reported
// together in a *PolicyError, each with its line and field.
func ParseAGT(source string, doc []byte) (*Policy, error) {
	pol, locate, err := parseAGT(source, doc)
	if err != nil {
		return nil, err
	}
	// Validate now so that callers converting files (kars convert, the
	// controller) see the same errors LoadAGT would report.
	if _, err := compile(pol, source, locate, nil); err != nil {
		return nil, err
	}
	return pol, nil
}

// agtRuleSource remembers where a generated rule came from.
type agtRuleSource struct {
	path    string         // "policies[3]"
	line    int            // line of the entry
	actions []*yaml.Node   // the pattern list the rule's actions came from
	keys    []*yaml.Node   // condition keys, in rule condition order
	fields  map[string]int // AGT field name -> line
}

type agtParser struct {
	el      errList
	sources []agtRuleSource
}

func parseAGT(source string, doc []byte) (*Policy, func(string) (string, int), error) {
	ap := &agtParser{}
	if len(doc) > maxAGTBytes {
		ap.el.add("", "profile is %d bytes; at most %d are accepted", len(doc), maxAGTBytes)
		return nil, nil, ap.el.err(source)
	}
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			ap.el.add("", "empty profile")
		} else {
			ap.el.errs = append(ap.el.errs, yamlError(err))
		}
		return nil, nil, ap.el.err(source)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		ap.el.errs = append(ap.el.errs, FieldError{Line: extra.Line, Msg: "more than one YAML document; a profile is exactly one"})
		return nil, nil, ap.el.err(source)
	}
	pol := ap.profile(&root)
	if err := ap.el.err(source); err != nil {
		return nil, nil, err
	}
	return pol, ap.locate, nil
}

// yamlError turns a yaml.v3 syntax error ("yaml: line 3: ...") into a
// FieldError carrying the line.
func yamlError(err error) FieldError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		if _, rest, ok := strings.Cut(msg, ": "); ok {
			msg = rest
		}
	}
	return FieldError{Line: line, Msg: "YAML: " + msg}
}

func (ap *agtParser) errAt(n *yaml.Node, field, format string, args ...any) {
	ap.el.errs = append(ap.el.errs, FieldError{Line: n.Line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// fields walks a mapping node, rejecting unknown and duplicate keys, and
// returns its values by key.
func (ap *agtParser) fields(n *yaml.Node, path string, known []string) map[string]*yaml.Node {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		ap.errAt(n, path, "want a mapping, got %s", kindName(n))
		return nil
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name := k.Value
		at := joinPath(path, name)
		switch {
		case k.Kind != yaml.ScalarNode:
			ap.errAt(k, path, "mapping keys must be plain strings")
		case !slices.Contains(known, name):
			ap.errAt(k, at, "unknown field (known fields: %s)", strings.Join(known, ", "))
		case out[name] != nil:
			ap.errAt(k, at, "field given twice")
		default:
			out[name] = resolve(v)
		}
	}
	return out
}

func (ap *agtParser) profile(root *yaml.Node) *Policy {
	top := root
	if top.Kind == yaml.DocumentNode && len(top.Content) == 1 {
		top = top.Content[0]
	}
	f := ap.fields(top, "", agtTopKeys)
	if f == nil {
		return nil
	}
	pol := &Policy{}
	if v := f["version"]; v == nil {
		ap.errAt(top, "version", "required (this reader understands version 1)")
	} else if s, ok := ap.str(v, "version"); ok && s != "1" && !strings.HasPrefix(s, "1.") {
		ap.errAt(v, "version", "unsupported version %q (this reader understands version 1)", s)
	}
	if v := f["name"]; v != nil {
		pol.Name, _ = ap.str(v, "name")
	}
	if v := f["agent"]; v != nil {
		if s, ok := ap.str(v, "agent"); ok && s != "" && s != "*" {
			pol.Name = firstNonEmpty(pol.Name, s)
			pol.Agents = []string{s}
		}
	}
	if v := f["description"]; v != nil {
		ap.str(v, "description")
	}
	ps := f["policies"]
	if ps == nil {
		ap.errAt(top, "policies", "required: a list of policy entries")
		return pol
	}
	if ps.Kind != yaml.SequenceNode {
		ap.errAt(ps, "policies", "want a list, got %s", kindName(ps))
		return pol
	}
	for i, item := range ps.Content {
		ap.entry(pol, resolve(item), fmt.Sprintf("policies[%d]", i))
	}
	return pol
}

func (ap *agtParser) entry(pol *Policy, n *yaml.Node, path string) {
	f := ap.fields(n, path, agtPolicyKeys)
	if f == nil {
		return
	}
	src := agtRuleSource{path: path, line: n.Line, fields: map[string]int{}}
	for k, v := range f {
		src.fields[k] = v.Line
	}
	base := Rule{}
	if v := f["name"]; v == nil {
		ap.errAt(n, path+".name", "required")
	} else {
		base.Name, _ = ap.str(v, path+".name")
	}
	if v := f["priority"]; v != nil {
		if p, ok := ap.uint(v, path+".priority"); ok {
			base.Priority = int32(min(p, MaxPriority+1)) // compile reports out-of-range
		}
	}
	if v := f["scope"]; v != nil {
		if s, ok := ap.str(v, path+".scope"); ok && s != "global" {
			ap.errAt(v, path+".scope", "scope %q is not supported: a kars policy applies to the sandboxes its ToolPolicy selects, so only \"global\" is meaningful", s)
		}
	}
	if v := f["description"]; v != nil {
		ap.str(v, path+".description")
	}
	if v := f["conditions"]; v != nil {
		base.Conditions, src.keys = ap.conditions(v, path+".conditions")
	}
	kind := ""
	if v := f["type"]; v == nil {
		ap.errAt(n, path+".type", "required: capability, approval or rate_limit")
	} else {
		kind, _ = ap.str(v, path+".type")
	}
	forbid := func(names ...string) {
		for _, name := range names {
			if v := f[name]; v != nil {
				ap.errAt(v, path+"."+name, "not meaningful for type %s", kind)
			}
		}
	}
	add := func(r Rule, list *yaml.Node) {
		s := src
		s.actions = list.Content
		pol.Rules = append(pol.Rules, r)
		ap.sources = append(ap.sources, s)
	}
	switch kind {
	case "capability":
		forbid("actions", "min_approvals", "max_calls", "window")
		denied, allowed := f["denied_actions"], f["allowed_actions"]
		if denied == nil && allowed == nil {
			ap.errAt(n, path, "a capability entry needs allowed_actions, denied_actions or both")
		}
		if denied != nil {
			r := base
			r.Effect, r.Actions = EffectDeny, ap.strList(denied, path+".denied_actions")
			add(r, denied)
		}
		if allowed != nil {
			r := base
			r.Effect, r.Actions = EffectAllow, ap.strList(allowed, path+".allowed_actions")
			add(r, allowed)
		}
	case "approval":
		forbid("allowed_actions", "denied_actions", "max_calls", "window")
		r := base
		r.Effect, r.MinApprovals = EffectRequireApproval, 1
		if v := f["min_approvals"]; v != nil {
			if m, ok := ap.uint(v, path+".min_approvals"); ok && m > 0 {
				r.MinApprovals = int32(min(m, maxApprovers+1))
			}
		}
		if acts := ap.required(f, n, path, "actions"); acts != nil {
			r.Actions = ap.strList(acts, path+".actions")
			add(r, acts)
		}
	case "rate_limit":
		forbid("allowed_actions", "denied_actions", "min_approvals")
		r := base
		r.Effect = EffectAllow
		r.RateLimit = &RuleRateLimit{}
		if v := ap.required(f, n, path, "max_calls"); v != nil {
			if m, ok := ap.uint(v, path+".max_calls"); ok {
				if m < 1 || m > 1<<30 {
					ap.errAt(v, path+".max_calls", "must be 1 to %d", 1<<30)
				}
				r.RateLimit.Requests = int32(min(m, 1<<30))
			}
		}
		if v := ap.required(f, n, path, "window"); v != nil {
			if secs, ok := ap.window(v, path+".window"); ok {
				r.RateLimit.WindowSeconds = secs
			}
		}
		if acts := ap.required(f, n, path, "actions"); acts != nil {
			r.Actions = ap.strList(acts, path+".actions")
			add(r, acts)
		}
	case "":
	default:
		ap.errAt(f["type"], path+".type", "%q is not one of capability, approval, rate_limit", kind)
	}
}

func (ap *agtParser) required(f map[string]*yaml.Node, n *yaml.Node, path, name string) *yaml.Node {
	v := f[name]
	if v == nil {
		ap.errAt(n, path+"."+name, "required")
	}
	return v
}

// conditions translates AGT equality conditions into CEL.
func (ap *agtParser) conditions(n *yaml.Node, path string) ([]Condition, []*yaml.Node) {
	if n.Kind != yaml.MappingNode {
		ap.errAt(n, path, "want a mapping of argument names to values, got %s", kindName(n))
		return nil, nil
	}
	var conds []Condition
	var keys []*yaml.Node
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolve(n.Content[i+1])
		at := joinPath(path, k.Value)
		if k.Kind != yaml.ScalarNode || (k.Tag != "!!str" && k.Tag != "!!merge") {
			ap.errAt(k, path, "condition keys must be strings")
			continue
		}
		if seen[k.Value] {
			ap.errAt(k, at, "condition given twice")
			continue
		}
		seen[k.Value] = true
		key := strconv.Quote(k.Value)
		var expr string
		switch v.Kind {
		case yaml.ScalarNode:
			lit, ok := ap.celLiteral(v, at)
			if !ok {
				continue
			}
			expr = fmt.Sprintf("%s in args && args[%s] == %s", key, key, lit)
		case yaml.SequenceNode:
			lits := make([]string, 0, len(v.Content))
			for j, item := range v.Content {
				item = resolve(item)
				if item.Kind != yaml.ScalarNode {
					ap.errAt(item, fmt.Sprintf("%s[%d]", at, j), "list items must be plain values")
					continue
				}
				if lit, ok := ap.celLiteral(item, fmt.Sprintf("%s[%d]", at, j)); ok {
					lits = append(lits, lit)
				}
			}
			expr = fmt.Sprintf("%s in args && args[%s] in [%s]", key, key, strings.Join(lits, ", "))
		default:
			ap.errAt(v, at, "nested condition values are not supported; use a value or a list of values")
			continue
		}
		conds = append(conds, Condition{Expression: expr})
		keys = append(keys, k)
	}
	return conds, keys
}

var decimalInt = regexp.MustCompile(`^(0|-?[1-9][0-9]*)$`)

// celLiteral renders a YAML scalar as a CEL literal, keeping its YAML type.
func (ap *agtParser) celLiteral(v *yaml.Node, at string) (string, bool) {
	switch v.Tag {
	case "!!str":
		return strconv.Quote(v.Value), true
	case "!!bool":
		b, err := strconv.ParseBool(strings.ToLower(v.Value))
		if err != nil {
			ap.errAt(v, at, "unreadable boolean %q", v.Value)
			return "", false
		}
		return strconv.FormatBool(b), true
	case "!!null":
		return "null", true
	case "!!int":
		if !decimalInt.MatchString(v.Value) {
			ap.errAt(v, at, "integer %q must be plain decimal", v.Value)
			return "", false
		}
		return v.Value, true
	case "!!float":
		f, err := strconv.ParseFloat(v.Value, 64)
		if err != nil || f != f || f > 1e308 || f < -1e308 {
			ap.errAt(v, at, "number %q is not a finite decimal", v.Value)
			return "", false
		}
		return strconv.FormatFloat(f, 'g', -1, 64) + floatSuffix(f), true
	}
	ap.errAt(v, at, "unsupported YAML tag %s", v.Tag)
	return "", false
}

// floatSuffix keeps a whole-valued float a CEL double ("7" would be an int).
func floatSuffix(f float64) string {
	if s := strconv.FormatFloat(f, 'g', -1, 64); !strings.ContainsAny(s, ".eE") {
		return ".0"
	}
	return ""
}

func (ap *agtParser) str(n *yaml.Node, at string) (string, bool) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float") {
		ap.errAt(n, at, "want a string, got %s", kindName(n))
		return "", false
	}
	return n.Value, true
}

func (ap *agtParser) strList(n *yaml.Node, at string) []string {
	if n.Kind != yaml.SequenceNode {
		ap.errAt(n, at, "want a list of strings, got %s", kindName(n))
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, item := range n.Content {
		item = resolve(item)
		if item.Kind != yaml.ScalarNode || item.Tag != "!!str" {
			ap.errAt(item, fmt.Sprintf("%s[%d]", at, i), "want a string, got %s", kindName(item))
			continue
		}
		out = append(out, item.Value)
	}
	return out
}

// uint reads a plain non-negative decimal integer. Spellings YAML versions
// disagree on ("010", "0x10", "1_000") are refused rather than guessed.
func (ap *agtParser) uint(n *yaml.Node, at string) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || !decimalInt.MatchString(n.Value) || n.Value[0] == '-' {
		ap.errAt(n, at, "want a plain non-negative integer, got %q", n.Value)
		return 0, false
	}
	v, err := strconv.ParseInt(n.Value, 10, 64)
	if err != nil {
		ap.errAt(n, at, "integer %q is out of range", n.Value)
		return 0, false
	}
	return v, true
}

// window reads "<digits>[s|m|h]" (bare digits are seconds).
func (ap *agtParser) window(n *yaml.Node, at string) (int32, bool) {
	s := n.Value
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "s"):
		s = s[:len(s)-1]
	case strings.HasSuffix(s, "m"):
		s, mult = s[:len(s)-1], 60
	case strings.HasSuffix(s, "h"):
		s, mult = s[:len(s)-1], 3600
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if n.Kind != yaml.ScalarNode || err != nil || v < 1 || !decimalInt.MatchString(s) || v*mult > 1<<30 {
		ap.errAt(n, at, "window %q: want a positive whole number of seconds, minutes or hours such as 30s, 5m or 1h", n.Value)
		return 0, false
	}
	return int32(v * mult), true
}

// locate maps a compiled-policy field path such as "rules[3].actions[1]"
// back to the AGT entry and line it came from.
func (ap *agtParser) locate(field string) (string, int) {
	var idx int
	var rest string
	if n, _ := fmt.Sscanf(field, "rules[%d]", &idx); n != 1 || idx < 0 || idx >= len(ap.sources) {
		return field, 0
	}
	src := ap.sources[idx]
	_, rest, _ = strings.Cut(field, "]")
	var k int
	switch {
	case strings.HasPrefix(rest, ".actions["):
		if n, _ := fmt.Sscanf(rest, ".actions[%d]", &k); n == 1 && k < len(src.actions) {
			return fmt.Sprintf("%s.actions[%d]", src.path, k), src.actions[k].Line
		}
	case strings.HasPrefix(rest, ".conditions["):
		if n, _ := fmt.Sscanf(rest, ".conditions[%d]", &k); n == 1 && k < len(src.keys) {
			return src.path + ".conditions." + src.keys[k].Value, src.keys[k].Line
		}
	case rest == ".priority":
		return src.path + ".priority", src.fields["priority"]
	case rest == ".name":
		return src.path + ".name", src.fields["name"]
	case rest == ".minApprovals":
		return src.path + ".min_approvals", src.fields["min_approvals"]
	}
	return src.path + rest, src.line
}

// resolve follows aliases (bounded, since yaml.v3 already rejects cycles).
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%s %q", strings.TrimPrefix(n.Tag, "!!"), n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
