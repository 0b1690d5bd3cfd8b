package learn

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

func TestRecordFlushReopen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state", FileName)
	r, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_700_000_000, 0).UTC()
	for range 3 {
		r.Record("api.github.com", 443, true, "learn", "learn", t0)
	}
	r.Record("x.example.com", 80, false, "blocklist", "bl", t0.Add(time.Second))
	r.Record("api.github.com", 22, true, "learn", "learn", t0)
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	es, dropped := r2.List()
	if len(es) != 3 || dropped != 0 {
		t.Fatalf("%+v", es)
	}
	if es[0].Host != "api.github.com" || es[0].Port != 443 || es[0].Allowed != 3 || !es[0].FirstSeen.Equal(t0) {
		t.Errorf("first: %+v", es[0])
	}
	if es[2].Host != "x.example.com" || es[2].Denied != 1 || es[2].Step != "blocklist" {
		t.Errorf("denied entry: %+v", es)
	}
}

func TestCapAndRun(t *testing.T) {
	p := filepath.Join(t.TempDir(), FileName)
	r, _ := Open(p)
	now := time.Now()
	for i := range MaxEntries + 5 {
		r.Record("h.example.com", uint16(i%65535+1), true, "learn", "", now)
	}
	es, dropped := r.List()
	if len(es) != MaxEntries || dropped != 5 {
		t.Errorf("%d entries, %d dropped", len(es), dropped)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, time.Hour, func(err error) { t.Error(err) }); close(done) }()
	cancel()
	<-done
	r2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if es, d := r2.List(); len(es) != MaxEntries || d != 5 {
		t.Errorf("after Run's final flush: %d, %d", len(es), d)
	}
}
