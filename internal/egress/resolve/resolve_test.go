package resolve

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestResolveCachesSplitsAndRemembers(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	r := New(func(_ context.Context, fqdn string) ([]netip.Addr, error) {
		calls.Add(1)
		<-release
		switch fqdn {
		case "mixed.test.":
			return []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("::ffff:169.254.169.254")}, nil
		case "gone.test.":
			return nil, &net.DNSError{Err: "no such host", Name: fqdn, IsNotFound: true}
		}
		return nil, errors.New("unexpected " + fqdn)
	})
	now := time.Unix(1_700_000_000, 0)
	r.now = func() time.Time { return now }
	// Concurrent callers share one lookup.
	var wg sync.WaitGroup
	results := make([]Result, 8)
	for i := range results {
		wg.Go(func() {
			res, err := r.Resolve(context.Background(), "mixed.test")
			if err != nil {
				t.Error(err)
			}
			results[i] = res
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	if calls.Load() != 1 {
		t.Errorf("%d lookups for 8 concurrent callers", calls.Load())
	}
	res := results[0]
	if len(res.Allowed) != 1 || res.Allowed[0].String() != "198.51.100.7" || len(res.Refused) != 2 || res.Err("mixed.test") != nil {
		t.Fatalf("split: %+v", res)
	}
	if res.Refused[1].Addr.String() != "169.254.169.254" || res.Refused[1].Reason != "the cloud instance-metadata endpoint" {
		t.Errorf("refused %+v", res.Refused)
	}
	// Cached until the TTL.
	r.Resolve(context.Background(), "mixed.test")
	if calls.Load() != 1 {
		t.Error("a fresh answer was looked up again")
	}
	if names := r.NamesFor(netip.MustParseAddr("198.51.100.7")); len(names) != 1 || names[0] != "mixed.test" {
		t.Errorf("NamesFor: %v", names)
	}
	if names := r.NamesFor(netip.MustParseAddr("10.0.0.1")); len(names) != 0 {
		t.Errorf("a refused address is remembered: %v", names)
	}
	now = now.Add(DefaultTTL)
	if names := r.NamesFor(netip.MustParseAddr("198.51.100.7")); len(names) != 0 {
		t.Errorf("NamesFor after the TTL: %v", names)
	}
	r.Resolve(context.Background(), "mixed.test")
	if calls.Load() != 2 {
		t.Error("a stale answer was not looked up again")
	}
	// Errors are cached briefly and keep their type.
	_, err := r.Resolve(context.Background(), "gone.test")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("not found: %v", err)
	}
	// Only refused addresses: an error saying so.
	only := Result{Refused: []Refusal{{Addr: netip.MustParseAddr("10.0.0.1"), Reason: "a private address"}}}
	var re *RefusedError
	if err := only.Err("x.test"); !errors.As(err, &re) {
		t.Errorf("Err: %v", err)
	}
	// An address resolves to itself, judged like any answer.
	res, err = r.Resolve(context.Background(), "127.0.0.1")
	if err != nil || len(res.Allowed) != 0 || len(res.Refused) != 1 {
		t.Errorf("literal: %+v %v", res, err)
	}
}
