package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiterScopes(t *testing.T) {
	l := NewLimiter(Limits{
		Global:   Limit{Events: 100, Per: time.Second},
		PerAgent: Limit{Events: 3, Per: time.Second},
		PerTool:  Limit{Events: 2, Per: time.Second},
	})
	tests := []struct {
		agent, tool string
		allowed     bool
		scope       Scope
	}{
		{"a", "search", true, ScopeNone},
		{"a", "search", true, ScopeNone},
		{"a", "search", false, ScopeTool}, // tool bucket (2) empty first
		{"a", "fetch", false, ScopeAgent}, // agent a used 3 tokens already
		{"b", "fetch", true, ScopeNone},   // other agent, other tool
		{"b", "search", false, ScopeTool}, // search is shared between agents
		{"b", "", true, ScopeNone},        // no tool: per-tool skipped
	}
	for i, tc := range tests {
		got := l.AllowAt(0, tc.agent, tc.tool)
		if got.Allowed != tc.allowed || got.Scope != tc.scope {
			t.Fatalf("call %d (%s,%s) = %+v, want allowed=%v scope=%s", i, tc.agent, tc.tool, got, tc.allowed, tc.scope)
		}
		if !got.Allowed && got.RetryAfter <= 0 {
			t.Fatalf("call %d refused without a retry hint", i)
		}
	}
}

func TestLimiterGlobalAndRunTimeAdjust(t *testing.T) {
	l := NewLimiter(Limits{Global: Limit{Events: 2, Per: time.Second}})
	for i := range 2 {
		if r := l.AllowAt(0, fmt.Sprint("agent", i), ""); !r.Allowed {
			t.Fatalf("call %d refused: %+v", i, r)
		}
	}
	if r := l.AllowAt(0, "agent9", ""); r.Allowed || r.Scope != ScopeGlobal {
		t.Fatalf("global limit not enforced: %+v", r)
	}
	l.SetGlobal(Limit{})
	l.SetPerAgent(Limit{Events: 1, Per: time.Minute})
	if r := l.AllowAt(0, "agent0", ""); !r.Allowed {
		t.Fatalf("agent0 refused after limits changed: %+v", r)
	}
	if r := l.AllowAt(0, "agent0", ""); r.Allowed || r.Scope != ScopeAgent {
		t.Fatalf("new per-agent limit not applied to an existing bucket: %+v", r)
	}
	if got := l.Limits().PerAgent; got.Events != 1 || got.Per != time.Minute {
		t.Fatalf("Limits().PerAgent = %+v", got)
	}
}

func TestLimiterBoundsKeys(t *testing.T) {
	l := NewLimiter(Limits{MaxKeys: 3})
	for i := range 3 {
		if r := l.AllowAt(0, fmt.Sprint("a", i), ""); !r.Allowed {
			t.Fatalf("agent %d refused below the key bound", i)
		}
	}
	if r := l.AllowAt(0, "a-new", ""); r.Allowed || r.Scope != ScopeAgent {
		t.Fatalf("key bound not enforced: %+v", r)
	}
	if r := l.AllowAt(0, "a1", ""); !r.Allowed {
		t.Fatalf("known agent refused once the bound was reached: %+v", r)
	}
}

func TestLimiterAllowDoesNotAllocateForKnownKeys(t *testing.T) {
	l := NewLimiter(Limits{PerAgent: Limit{Events: 1 << 30, Per: time.Second}, PerTool: Limit{Events: 1 << 30, Per: time.Second}})
	l.Allow("agent", "tool")
	if n := testing.AllocsPerRun(1000, func() { l.Allow("agent", "tool") }); n != 0 {
		t.Fatalf("Allow allocates %.1f times per call", n)
	}
}
