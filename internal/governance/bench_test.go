package governance

import (
	"fmt"
	"path"
	"slices"
	"sort"
	"testing"
	"time"
)

// benchPolicy builds an n-rule profile shaped like a real sandbox policy:
// exact tools, tool and MCP globs, egress host globs, model globs and a few
// high-priority denies, spread over the namespaces.
func benchPolicy(n int) *Policy {
	pol := &Policy{Name: fmt.Sprintf("bench-%d", n)}
	for i := 0; len(pol.Rules) < n; i++ {
		var r Rule
		switch i % 10 {
		case 0:
			r = Rule{Effect: EffectAllow, Actions: []string{fmt.Sprintf("tool:tool_%d", i), fmt.Sprintf("tool:alt_%d", i)}}
		case 1:
			r = Rule{Effect: EffectDeny, Actions: []string{fmt.Sprintf("tool:danger_%d_*", i)}, Priority: 50}
		case 2:
			r = Rule{Effect: EffectAllow, Actions: []string{fmt.Sprintf("mcp:server%d.*", i)}}
		case 3:
			r = Rule{Effect: EffectAllow, Actions: []string{fmt.Sprintf("egress:*.host%d.example:443", i)}}
		case 4:
			r = Rule{Effect: EffectAllow, Actions: []string{fmt.Sprintf("inference:chat:model-%d-*", i)}}
		case 5:
			r = Rule{Effect: EffectRequireApproval, Actions: []string{fmt.Sprintf("tool:pay_%d", i)}, Priority: 10}
		case 6:
			r = Rule{Effect: EffectDeny, Actions: []string{fmt.Sprintf("shell:cmd%d*", i)}, Priority: 100}
		case 7:
			r = Rule{Effect: EffectAllow, Actions: []string{fmt.Sprintf("a2a:method%d", i), fmt.Sprintf("mesh:send:peer-%d", i)}}
		case 8:
			r = Rule{Effect: EffectAllow, Actions: []string{fmt.Sprintf("memory:op%d", i), fmt.Sprintf("spawn:create:kind%d", i)}}
		case 9:
			r = Rule{Effect: EffectDeny, Actions: []string{fmt.Sprintf("egress:10.0.%d.*:*", i)}, Priority: 200}
		}
		r.Name = fmt.Sprintf("rule-%03d", i)
		pol.Rules = append(pol.Rules, r)
	}
	return pol
}

// benchRequests is a mix of allowed, denied and unmatched actions across
// namespaces, none carrying arguments (the hot path).
func benchRequests() []Request {
	actions := []string{
		"tool:tool_40", "tool:alt_90", "tool:danger_11_rm", "mcp:server52.read_file",
		"egress:api.host63.example:443", "egress:10.0.29.4:22", "inference:chat:model-84-large",
		"tool:pay_75", "shell:cmd16 -x", "a2a:method77", "mesh:send:peer-87", "memory:op98",
		"spawn:create:kind38", "tool:unknown", "egress:evil.example:443", "inference:embed:x",
	}
	reqs := make([]Request, len(actions))
	for i, a := range actions {
		reqs[i] = Request{Agent: "agent-1", Action: a}
	}
	return reqs
}

// naiveDecide is the baseline: a linear scan over the rules in source order
// with path.Match on every pattern, keeping the best by priority and effect.
// It is what a straightforward engine without compilation does.
func naiveDecide(pol *Policy, req *Request) Decision {
	best := -1
	for i := range pol.Rules {
		r := &pol.Rules[i]
		for _, pat := range r.Actions {
			if ok, _ := path.Match(pat, req.Action); !ok {
				continue
			}
			if best < 0 || r.Priority > pol.Rules[best].Priority ||
				(r.Priority == pol.Rules[best].Priority && strictness(r.Effect) > strictness(pol.Rules[best].Effect)) {
				best = i
			}
			break
		}
	}
	if best < 0 {
		return Decision{Reason: reasonNoRule}
	}
	r := &pol.Rules[best]
	v := Deny
	switch r.Effect {
	case EffectAllow:
		v = Allow
	case EffectRequireApproval:
		v = RequireApproval
	}
	return Decision{Verdict: v, Rule: r.Name, Reason: "rule " + r.Name}
}

// TestNaiveBaselineAgrees keeps the baseline honest: on the benchmark
// requests it must reach the same verdicts as the engine. (path.Match's '*'
// stops at '/', which no benchmark action contains.)
func TestNaiveBaselineAgrees(t *testing.T) {
	pol := benchPolicy(100)
	e := mustEngine(t, pol)
	for _, req := range benchRequests() {
		got, want := e.Decide(&req), naiveDecide(pol, &req)
		if got.Verdict != want.Verdict || got.Rule != want.Rule {
			t.Errorf("%s: engine %s/%s, baseline %s/%s", req.Action, got.Verdict, got.Rule, want.Verdict, want.Rule)
		}
	}
}

func BenchmarkDecide100Rules(b *testing.B) {
	e := NewEngine()
	if err := e.Load(benchPolicy(100)); err != nil {
		b.Fatal(err)
	}
	reqs := benchRequests()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e.Decide(&reqs[i%len(reqs)])
		i++
	}
}

func BenchmarkDecide100RulesNaiveBaseline(b *testing.B) {
	pol := benchPolicy(100)
	reqs := benchRequests()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		naiveDecide(pol, &reqs[i%len(reqs)])
		i++
	}
}

// BenchmarkDecide100RulesLatency reports the median and 99th percentile of
// per-call latency. Timing a single call costs about as much as the call, so
// each sample times a run of 64 calls and divides; the percentiles are over
// those samples.
func BenchmarkDecide100RulesLatency(b *testing.B) {
	e := NewEngine()
	if err := e.Load(benchPolicy(100)); err != nil {
		b.Fatal(err)
	}
	reqs := benchRequests()
	const run = 64
	var samples []float64
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		for j := range run {
			e.Decide(&reqs[j%len(reqs)])
		}
		samples = append(samples, float64(time.Since(start))/run)
	}
	sort.Float64s(samples)
	b.ReportMetric(samples[len(samples)/2], "p50-ns/decide")
	b.ReportMetric(samples[len(samples)*99/100], "p99-ns/decide")
	b.ReportMetric(0, "ns/op") // ns/op here is per run of 64; the metrics above are per call
	_ = slices.Clip(samples)
}
