// Package lossy tracks which fields of a source manifest a conversion
// carried over, so that every field it did not carry is named.
//
// A converter reads its source object through a Doc. Each read marks the
// field (and everything below it) as carried; Drop marks a field as dropped
// on purpose, with the reason a user should read. Whatever was neither read
// nor dropped is also reported, with a generic reason: a field the converter
// does not know (a newer version of the peer's API, a typo) can never vanish
// silently. This package is pure and imports nothing of kars.
package lossy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Field is one source field a conversion did not carry over.
type Field struct {
	// Object names the source object: "kagent.dev/v1alpha2 Agent kagent/k8s-agent".
	Object string
	// Path is the field's path in the object, for example
	// "spec.declarative.deployment.nodeSelector" or "spec.tools[2]".
	Path string
	// Reason says why it has no kars analog and what to do instead.
	Reason string
}

func (f Field) String() string { return f.Object + ": " + f.Path + ": " + f.Reason }

// NoAnalog is the reason given for fields the converter does not know.
const NoAnalog = "no kars analog (field not recognised by this converter)"

// Doc is one source object being converted.
type Doc struct {
	object  string
	root    map[string]any
	carried map[string]bool
	dropped map[string]string
	order   []string // dropped paths in the order Drop was called
}

// New starts tracking root, the object's content as decoded from YAML or
// JSON (maps, slices, strings, numbers, bools). object names it in reports.
func New(object string, root map[string]any) *Doc {
	return &Doc{object: object, root: root, carried: map[string]bool{}, dropped: map[string]string{}}
}

// Object returns the name of the object given to New.
func (d *Doc) Object() string { return d.object }

// Get returns the value at path and marks it carried. Paths are dotted keys
// with [i] list indices: "spec.tools[0].mcpServer.name".
func (d *Doc) Get(path string) (any, bool) {
	v, ok := lookup(d.root, path)
	if ok {
		d.carried[path] = true
	}
	return v, ok
}

// Has reports whether path holds a non-empty value, without marking it.
func (d *Doc) Has(path string) bool {
	v, ok := lookup(d.root, path)
	return ok && !empty(v)
}

// Peek returns the value at path without marking it carried.
func (d *Doc) Peek(path string) (any, bool) { return lookup(d.root, path) }

// String returns the string at path; a value of another type is an error.
func (d *Doc) String(path string) (string, error) {
	v, ok := d.Get(path)
	if !ok || v == nil {
		return "", nil
	}
	s, isStr := v.(string)
	if !isStr {
		return "", fmt.Errorf("%s: %s must be a string, not %T", d.object, path, v)
	}
	return s, nil
}

// Strings returns the list of strings at path.
func (d *Doc) Strings(path string) ([]string, error) {
	v, ok := d.Get(path)
	if !ok || v == nil {
		return nil, nil
	}
	l, isList := v.([]any)
	if !isList {
		return nil, fmt.Errorf("%s: %s must be a list of strings, not %T", d.object, path, v)
	}
	out := make([]string, 0, len(l))
	for i, e := range l {
		s, isStr := e.(string)
		if !isStr {
			return nil, fmt.Errorf("%s: %s[%d] must be a string, not %T", d.object, path, i, e)
		}
		out = append(out, s)
	}
	return out, nil
}

// Bool returns the bool at path and whether it was set.
func (d *Doc) Bool(path string) (bool, bool, error) {
	v, ok := d.Get(path)
	if !ok || v == nil {
		return false, false, nil
	}
	b, isBool := v.(bool)
	if !isBool {
		return false, false, fmt.Errorf("%s: %s must be true or false, not %T", d.object, path, v)
	}
	return b, true, nil
}

// Int returns the integer at path and whether it was set.
func (d *Doc) Int(path string) (int64, bool, error) {
	v, ok := d.Get(path)
	if !ok || v == nil {
		return 0, false, nil
	}
	switch n := v.(type) {
	case int64:
		return n, true, nil
	case int:
		return int64(n), true, nil
	case float64:
		if n == float64(int64(n)) {
			return int64(n), true, nil
		}
	}
	return 0, false, fmt.Errorf("%s: %s must be an integer, not %v", d.object, path, v)
}

// Len returns the length of the list at path (0 when absent or not a list),
// without marking it: iterate and read the elements' fields.
func (d *Doc) Len(path string) int {
	v, _ := lookup(d.root, path)
	l, _ := v.([]any)
	return len(l)
}

// Keys returns the keys of the map at path, sorted, without marking it.
func (d *Doc) Keys(path string) []string {
	v, _ := lookup(d.root, path)
	m, _ := v.(map[string]any)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Carry marks path as carried over without reading it (its meaning is
// kept some other way, or it is server-owned state with nothing to keep).
func (d *Doc) Carry(path string) {
	if _, ok := lookup(d.root, path); ok {
		d.carried[path] = true
	}
}

// Carried reports whether path was read or carried.
func (d *Doc) Carried(path string) bool { return d.carried[path] }

// Drop reports path, when present and non-empty, as dropped for reason,
// even if it was read before (a converter may read a field to learn it
// cannot carry it).
func (d *Doc) Drop(path, reason string) {
	v, ok := lookup(d.root, path)
	if !ok || empty(v) {
		return
	}
	delete(d.carried, path)
	if _, seen := d.dropped[path]; !seen {
		d.order = append(d.order, path)
	}
	d.dropped[path] = reason
}

// Lossy returns every field that was dropped or never read, in a stable
// order: explicit drops first as they were made, then unread fields in
// document order (map keys sorted).
func (d *Doc) Lossy() []Field {
	var out []Field
	for _, p := range d.order {
		if d.carried[p] {
			continue // carried again after the drop
		}
		out = append(out, Field{Object: d.object, Path: p, Reason: d.dropped[p]})
	}
	touched := map[string]bool{}
	for p := range d.carried {
		for _, q := range prefixes(p) {
			touched[q] = true
		}
	}
	for p := range d.dropped {
		for _, q := range prefixes(p) {
			touched[q] = true
		}
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		if d.carried[path] || d.dropped[path] != "" || empty(v) {
			return
		}
		if path != "" && !touched[path] {
			out = append(out, Field{Object: d.object, Path: path, Reason: NoAnalog})
			return
		}
		switch x := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				walk(join(path, k), x[k])
			}
		case []any:
			for i, e := range x {
				walk(path+"["+strconv.Itoa(i)+"]", e)
			}
		default:
			out = append(out, Field{Object: d.object, Path: path, Reason: NoAnalog})
		}
	}
	walk("", d.root)
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	if strings.ContainsAny(key, ".[]") {
		return path + "[" + strconv.Quote(key) + "]"
	}
	return path + "." + key
}

// prefixes returns path and every path above it.
func prefixes(path string) []string {
	out := []string{path}
	for i := len(path) - 1; i > 0; i-- {
		if path[i] == '.' || path[i] == '[' {
			out = append(out, path[:i])
		}
	}
	return out
}

func empty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	case string:
		return x == ""
	}
	return false
}

// lookup follows path through maps and lists.
func lookup(root map[string]any, path string) (any, bool) {
	var cur any = root
	for _, seg := range split(path) {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[seg.key]
			if !ok || seg.index {
				return nil, false
			}
			cur = v
		case []any:
			if !seg.index {
				return nil, false
			}
			i, err := strconv.Atoi(seg.key)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

type segment struct {
	key   string
	index bool
}

// split parses "a.b[2].c" and `a["x.y"]` into segments.
func split(path string) []segment {
	var out []segment
	for path != "" {
		switch {
		case strings.HasPrefix(path, "["):
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return append(out, segment{key: path})
			}
			inner := path[1:end]
			if q, err := strconv.Unquote(inner); err == nil {
				out = append(out, segment{key: q}) // a map key holding '.'
			} else {
				out = append(out, segment{key: inner, index: true})
			}
			path = strings.TrimPrefix(path[end+1:], ".")
		default:
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				return append(out, segment{key: path})
			}
			out = append(out, segment{key: path[:end]})
			path = strings.TrimPrefix(path[end:], ".")
		}
	}
	return out
}

// Preamble is the report a conversion prints before its output, as lines:
// the lossy fields, then the defaults kars chose, notes and skipped input.
// Empty sections are left out.
func Preamble(title string, dropped []Field, defaults, notes, skipped []string) []string {
	out := []string{title}
	section := func(head string, lines []string) {
		if len(lines) == 0 {
			return
		}
		out = append(out, "", head)
		for _, l := range lines {
			out = append(out, "  - "+l)
		}
	}
	lines := make([]string, len(dropped))
	for i, f := range dropped {
		lines[i] = f.String()
	}
	if len(dropped) == 0 {
		out = append(out, "", "lossy: nothing; every source field was carried over")
	}
	section(fmt.Sprintf("lossy: %d source field(s) have no kars analog and are not carried:", len(dropped)), lines)
	section("defaults: kars features the source does not express, left off or at their strictest:", defaults)
	section("notes:", notes)
	section("skipped input:", skipped)
	return out
}
