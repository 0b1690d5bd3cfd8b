package governance

import (
	"fmt"
	"strings"
)

// FieldError is one problem found in a policy, located by field path and,
// for policies read from YAML, by line.
type FieldError struct {
	// Line is the 1-based source line, or 0 when unknown (JSON input).
	Line int
	// Field is the path of the offending field, e.g. "rules[2].actions[0]".
	Field string
	// Msg says what is wrong.
	Msg string
}

// Error renders "line N: field: message", leaving out what is unknown.
func (e FieldError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// PolicyError reports every problem that made a policy unusable. A policy
// with any problem is rejected as a whole; the engine keeps the last good
// one in force.
type PolicyError struct {
	// Source names where the policy came from (a file name, "ToolPolicy
	// ns/name"), when known.
	Source string
	Errs   []FieldError
}

// Error lists every problem, one per line.
func (e *PolicyError) Error() string {
	var b strings.Builder
	b.WriteString("invalid policy")
	if e.Source != "" {
		fmt.Fprintf(&b, " %s", e.Source)
	}
	fmt.Fprintf(&b, " (%d problem", len(e.Errs))
	if len(e.Errs) != 1 {
		b.WriteString("s")
	}
	b.WriteString(")")
	for _, fe := range e.Errs {
		b.WriteString("\n  ")
		b.WriteString(fe.Error())
	}
	return b.String()
}

// errList accumulates FieldErrors while validating.
type errList struct {
	errs []FieldError
	// locate maps a field path of the compiled Policy to the path and line
	// the author wrote, when the policy was converted from YAML; nil
	// otherwise.
	locate func(field string) (string, int)
}

func (l *errList) add(field, format string, args ...any) {
	fe := FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	if l.locate != nil {
		fe.Field, fe.Line = l.locate(field)
	}
	l.errs = append(l.errs, fe)
}

func (l *errList) err(source string) error {
	if len(l.errs) == 0 {
		return nil
	}
	return &PolicyError{Source: source, Errs: l.errs}
}
