package ratelimit

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBucketBurstThenRefill(t *testing.T) {
	// 3 per second, burst 3: three calls pass at t=0, the fourth waits a third
	// of a second, and after 1/3 s exactly one more passes.
	b := NewBucket(Limit{Events: 3, Per: time.Second})
	for i := range 3 {
		if ok, _ := b.Allow(0); !ok {
			t.Fatalf("call %d refused from a full bucket", i)
		}
	}
	ok, wait := b.Allow(0)
	if ok {
		t.Fatal("fourth call admitted past the burst")
	}
	if want := time.Second / 3; wait != want {
		t.Fatalf("retryAfter = %s, want %s", wait, want)
	}
	third := int64(time.Second / 3)
	if ok, _ := b.Allow(third); !ok {
		t.Fatal("call refused after one refill interval")
	}
	if ok, _ := b.Allow(third); ok {
		t.Fatal("two calls admitted after one refill interval")
	}
}

func TestBucketTable(t *testing.T) {
	sec := int64(time.Second)
	tests := []struct {
		name  string
		limit Limit
		calls []int64 // times of calls
		want  []bool
	}{
		{"unlimited", Limit{}, []int64{0, 0, 0, 0}, []bool{true, true, true, true}},
		{"burst larger than rate", Limit{Events: 1, Per: time.Second, Burst: 3},
			[]int64{0, 0, 0, 0, sec, sec}, []bool{true, true, true, false, true, false}},
		{"idle refills to burst only", Limit{Events: 2, Per: time.Second},
			[]int64{0, 0, 100 * sec, 100 * sec, 100 * sec}, []bool{true, true, true, true, false}},
		{"steady rate passes", Limit{Events: 10, Per: time.Second, Burst: 1},
			[]int64{0, sec / 10, 2 * sec / 10, 2*sec/10 + 1}, []bool{true, true, true, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBucket(tc.limit)
			for i, at := range tc.calls {
				if got, _ := b.Allow(at); got != tc.want[i] {
					t.Fatalf("call %d at %d: allowed=%v, want %v", i, at, got, tc.want[i])
				}
			}
		})
	}
}

func TestBucketSetLimitAtRunTime(t *testing.T) {
	b := NewBucket(Limit{Events: 1, Per: time.Hour})
	if ok, _ := b.Allow(0); !ok {
		t.Fatal("first call refused")
	}
	if ok, _ := b.Allow(0); ok {
		t.Fatal("second call admitted under 1/hour")
	}
	b.SetLimit(Limit{Events: 1000, Per: time.Second})
	// The arrival time left by the hourly limit is far in the future; the new
	// limit must still be judged against it (no free reset by reconfiguring).
	if ok, _ := b.Allow(0); ok {
		t.Fatal("reconfiguring reset the bucket")
	}
	b.SetLimit(Limit{})
	if ok, _ := b.Allow(0); !ok {
		t.Fatal("unlimited bucket refused")
	}
	if got := b.Limit(); !got.Unlimited() {
		t.Fatalf("Limit() = %v, want unlimited", got)
	}
}

func TestBucketConcurrentNeverOverAdmits(t *testing.T) {
	const burst = 1000
	b := NewBucket(Limit{Events: burst, Per: time.Hour})
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				if ok, _ := b.Allow(0); ok {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := admitted.Load(); got != burst {
		t.Fatalf("admitted %d calls at one instant, want exactly the burst %d", got, burst)
	}
}

func TestLimitValidate(t *testing.T) {
	for _, l := range []Limit{{Events: -1, Per: time.Second}, {Events: 1, Per: -1}, {Events: 1, Per: time.Second, Burst: -2}, {Events: 10, Per: 5}} {
		if l.Validate() == nil {
			t.Errorf("Validate(%+v) = nil, want an error", l)
		}
	}
	if err := (Limit{Events: 5, Per: time.Minute}).Validate(); err != nil {
		t.Errorf("valid limit rejected: %v", err)
	}
}

func TestBucketAllowDoesNotAllocate(t *testing.T) {
	b := NewBucket(Limit{Events: 1 << 30, Per: time.Second})
	var now int64
	if n := testing.AllocsPerRun(1000, func() { now++; b.Allow(now) }); n != 0 {
		t.Fatalf("Allow allocates %.1f times per call", n)
	}
}
