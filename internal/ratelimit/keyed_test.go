package ratelimit

import (
	"testing"
	"time"
)

func TestKeyed(t *testing.T) {
	var k Keyed
	l := PerMinute(60, 2)
	for i, want := range []bool{true, true, false} {
		if ok, _ := k.Allow("a", l, 0); ok != want {
			t.Fatalf("call %d: %v", i, ok)
		}
	}
	if ok, _ := k.Allow("b", l, 0); !ok {
		t.Fatal("keys share a bucket")
	}
	// A changed limit is the bucket's from then on (what it spent stays
	// spent: GCRA keeps its arrival time).
	k.Allow("a", PerMinute(6000, 100), 0)
	if got := k.buckets["a"].Limit(); got != PerMinute(6000, 100) {
		t.Fatalf("limit %v after the change", got)
	}
	k.Allow("b", l, 0)
	if ok, retry := k.Allow("b", l, int64(10*time.Millisecond)); ok || retry <= 0 {
		t.Fatalf("b: %v %v", ok, retry)
	}
}
