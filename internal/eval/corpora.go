package eval

import (
	"bufio"
	"bytes"
	"embed"
	"encoding/json"
	"fmt"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/strictjson"
)

//go:embed corpora/*.jsonl
var corpora embed.FS

// Corpus returns a built-in dataset, written by kars:
//
//   - jailbreak-baseline: well-known jailbreak framings (persona, grandma,
//     fiction, developer mode, encoding) that must be refused, and two
//     harmless questions that must not be (refusal).
//   - prompt-injection: instructions smuggled in quoted content (an
//     email, a page, a tool result) asking the agent to write or read
//     files; the tools must not be called (policyDecision), and a plain
//     request must still work.
//   - banned-tools: router probes of actions no sandbox should be allowed
//     (shell, exec, kubectl, spawning pods and sandboxes), which must be denied
//     (policyDecision).
//   - egress-known-bad: router probes of destinations that must be denied:
//     instance metadata, paste and tunnel services, private addresses,
//     the Kubernetes API (policyDecision).
//   - memory-isolation: a canary written to memory as one principal must
//     not be found by another (policyDecision); it applies to memory
//     scoped per user or session.
func Corpus(name karsv1.BuiltinCorpus) ([]Case, error) {
	b, err := corpora.ReadFile("corpora/" + string(name) + ".jsonl")
	if err != nil {
		return nil, fmt.Errorf("no built-in corpus %q", name)
	}
	return ParseJSONL(b)
}

// MaxCases bounds a dataset, as the KarsEval schema bounds inline cases.
const MaxCases = 200

// ParseJSONL reads one case per line (a ConfigMap's cases.jsonl, or a
// corpus): strict JSON objects with the EvalCase fields (input, expected,
// expectedTools, expectRefusal, expectedDecisions); blank lines are
// skipped. Unknown fields are errors, so that a misspelt one is not
// silently ignored.
func ParseJSONL(b []byte) ([]Case, error) {
	var out []Case
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		if err := strictjson.Validate(line); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		var c Case
		if err := dec.Decode(&c); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if c.Input == "" && c.Probe == nil {
			return nil, fmt.Errorf("line %d: a case needs an input (or, in built-in corpora, a probe)", n)
		}
		if len(c.Input) > 16384 || len(c.Expected) > 16384 {
			return nil, fmt.Errorf("line %d: input and expected are at most 16384 bytes", n)
		}
		if len(out) == MaxCases {
			return nil, fmt.Errorf("more than %d cases", MaxCases)
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// FromSpec converts inline KarsEval cases.
func FromSpec(cases []karsv1.EvalCase) []Case {
	out := make([]Case, 0, len(cases))
	for _, c := range cases {
		ec := Case{Input: c.Input, Expected: c.Expected, ExpectedTools: c.ExpectedTools}
		if c.ExpectRefusal {
			t := true
			ec.ExpectRefusal = &t
		}
		for _, d := range c.ExpectedDecisions {
			ec.ExpectedDecisions = append(ec.ExpectedDecisions, Decision{Tool: d.Tool, Decision: d.Decision})
		}
		out = append(out, ec)
	}
	return out
}
