package blocklist

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const sample = `# a plain list
ads.example.com
Tracker.Example.NET.
*.wild.example.org
.dot.example.org

# a hosts file
0.0.0.0 hosts1.example.com hosts2.example.com # inline comment
127.0.0.1 localhost
::1 ip6-localhost
0.0.0.0 0.0.0.0
! adblock
[Adblock Plus 2.0]
||adblock.example.com^
||adblock-path.example.com/x^
||adblock-opt.example.com^$third-party
@@||allowed.example.com^
not a domain line
bad_host!.com
10.0.0.1
example.123
`

func parse(t testing.TB, s string) (*Set, Stats) {
	t.Helper()
	b := NewBuilder()
	st, err := Parse(strings.NewReader(s), b)
	if err != nil {
		t.Fatal(err)
	}
	return b.Build(), st
}

func TestParseFormats(t *testing.T) {
	set, st := parse(t, sample)
	for _, c := range []struct {
		host, matched string
	}{
		{"ads.example.com", "ads.example.com"},
		{"x.y.ads.example.com", "ads.example.com"},
		{"tracker.example.net", "tracker.example.net"},
		{"a.wild.example.org", "wild.example.org"},
		{"wild.example.org", "wild.example.org"},
		{"dot.example.org", "dot.example.org"},
		{"hosts1.example.com", "hosts1.example.com"},
		{"hosts2.example.com", "hosts2.example.com"},
		{"adblock.example.com", "adblock.example.com"},
		{"example.com", ""},
		{"localhost", ""},
		{"adblock-path.example.com", ""},
		{"adblock-opt.example.com", ""},
		{"allowed.example.com", ""},
		{"notads.example.com", ""},
	} {
		m, ok := set.Contains(c.host)
		if m != c.matched || ok != (c.matched != "") {
			t.Errorf("Contains(%s) = %q, %v; want %q", c.host, m, ok, c.matched)
		}
	}
	if set.Len() != 7 || st.Domains != 7 {
		t.Errorf("Len %d, Domains %d; want 7", set.Len(), st.Domains)
	}
	// adblock-path, adblock-opt, @@ exception, "not a domain line",
	// bad_host!, 10.0.0.1 (an address), example.123 (numeric TLD).
	if st.Skipped != 7 {
		t.Errorf("Skipped %d, want 7 (%+v)", st.Skipped, st)
	}
}

func TestDuplicatesAndLongLines(t *testing.T) {
	set, st := parse(t, "a.com\nA.com\na.com.\n"+strings.Repeat("x", 10000)+"\nb.com")
	if set.Len() != 2 || st.Domains != 4 || st.Skipped != 1 {
		t.Errorf("Len %d stats %+v", set.Len(), st)
	}
	var empty *Set
	if _, ok := empty.Contains("a.com"); ok || empty.Len() != 0 {
		t.Error("a nil set is empty")
	}
	if _, ok := (&Set{}).Contains("a.com"); ok {
		t.Error("the zero set is empty")
	}
}

func TestTooMany(t *testing.T) {
	b := NewBuilder()
	b.hashes = make([]uint64, MaxDomains)
	if _, err := Parse(strings.NewReader("one.more.com\n"), b); err != ErrTooMany {
		t.Fatalf("err = %v, want ErrTooMany", err)
	}
}

// genList writes n distinct domains in a hosts-like mix.
func genList(n int) []byte {
	var b bytes.Buffer
	b.Grow(n * 28)
	for i := range n {
		fmt.Fprintf(&b, "d%07d.tracker%d.example\n", i, i%97)
	}
	return b.Bytes()
}

func TestMillionDomainsFitIn64MiB(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a million-domain set")
	}
	raw := genList(1_000_000)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b := NewBuilder()
	if _, err := Parse(bytes.NewReader(raw), b); err != nil {
		t.Fatal(err)
	}
	set := b.Build()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if set.Len() != 1_000_000 {
		t.Fatalf("Len %d", set.Len())
	}
	live := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("1,000,000 domains: table %d MiB, live heap growth %d MiB", set.Bytes()>>20, live>>20)
	if set.Bytes() > 64<<20 || live > 64<<20 {
		t.Errorf("table %d bytes, heap growth %d bytes: over 64 MiB", set.Bytes(), live)
	}
	if _, ok := set.Contains(fmt.Sprintf("x.d0999999.tracker%d.example", 999999%97)); !ok {
		t.Error("last domain missing")
	}
	if _, ok := set.Contains("d1000000.tracker0.example"); ok {
		t.Error("a domain never added is reported")
	}
	runtime.KeepAlive(set)
	runtime.KeepAlive(raw)
}

func TestContainsDoesNotAllocate(t *testing.T) {
	set, _ := parse(t, sample)
	if n := testing.AllocsPerRun(1000, func() {
		set.Contains("a.b.c.ads.example.com")
		set.Contains("nothing.example.org")
	}); n != 0 {
		t.Errorf("Contains allocates %v times", n)
	}
}

func newLoader(t *testing.T, dir string, srcs ...Source) *Loader {
	return &Loader{Dir: dir, Sources: srcs, Log: nil}
}

func TestLoaderFileAndURL(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "list.txt")
	os.WriteFile(file, []byte("file.example.com\n"), 0o600)
	var body atomic.Value
	body.Store("url.example.com\n")
	var hits, notModified atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		b := body.Load().(string)
		etag := fmt.Sprintf(`"%x"`, sha256.Sum256([]byte(b)))
		if r.Header.Get("If-None-Match") == etag {
			notModified.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		if b == "fail" {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("ETag", etag)
		io.WriteString(w, b)
	}))
	defer srv.Close()
	us, err := URLSource(srv.URL, srv.Client(), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := URLSource("http://example.com/list", http.DefaultClient, false); err == nil {
		t.Error("a plain-HTTP source must be refused")
	}
	cache := filepath.Join(dir, "cache")
	l := newLoader(t, cache, FileSource("file:"+file, file), us)
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := l.Current()
	if s.Domains != 2 || s.Version == "" || len(s.Sources) != 2 {
		t.Fatalf("snapshot %+v", s)
	}
	for _, h := range []string{"a.file.example.com", "url.example.com"} {
		if _, ok := l.Contains(h); !ok {
			t.Errorf("%s not blocked", h)
		}
	}
	v1 := s.Version

	// Unchanged: the URL answers 304, the version stays.
	if err := l.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if l.Current().Version != v1 || notModified.Load() != 1 {
		t.Errorf("unchanged refresh: version %s (was %s), 304s %d", l.Current().Version, v1, notModified.Load())
	}

	// The source fails: the last good list stays, the error is reported.
	body.Store("fail")
	if err := l.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("failing refresh: %v", err)
	}
	if _, ok := l.Contains("url.example.com"); !ok || l.Current().Version != v1 {
		t.Error("the last good list was dropped on failure")
	}
	if st := l.Current().Sources[1]; st.LastError == "" || st.Domains != 1 {
		t.Errorf("failing source status %+v", st)
	}

	// A restart while the source is down starts from the cached list.
	l2 := newLoader(t, cache, FileSource("file:"+file, file), us)
	if err := l2.Start(context.Background()); err == nil {
		t.Error("Start must report the failing source")
	}
	if _, ok := l2.Contains("url.example.com"); !ok || l2.Current().Version != v1 {
		t.Error("a restarted loader lost the last good list")
	}

	// An empty list is refused as a failure, not installed.
	body.Store("# nothing\n")
	if err := l.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "names no domain") {
		t.Fatalf("empty list: %v", err)
	}
	if _, ok := l.Contains("url.example.com"); !ok {
		t.Error("an empty list replaced the last good one")
	}

	// A new list takes effect with a new version.
	body.Store("new.example.com\n")
	if err := l.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Contains("url.example.com"); ok {
		t.Error("the old list is still in force")
	}
	if _, ok := l.Contains("new.example.com"); !ok || l.Current().Version == v1 {
		t.Error("the new list is not in force")
	}
	if age := l.Current().Age(time.Now()); age < 0 || age > time.Minute {
		t.Errorf("age %s", age)
	}
}

func TestLoaderRunRefreshes(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "list.txt")
	os.WriteFile(file, []byte("one.example.com\n"), 0o600)
	var updates atomic.Int32
	l := &Loader{Dir: filepath.Join(dir, "c"), Sources: []Source{FileSource("f", file)}, Interval: 20 * time.Millisecond,
		OnUpdate: func(*Snapshot) { updates.Add(1) }}
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	os.WriteFile(file, []byte("two.example.com\n"), 0o600)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := l.Contains("two.example.com"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the refreshed list never took effect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if updates.Load() < 2 {
		t.Errorf("OnUpdate called %d times", updates.Load())
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("||a.com^\n0.0.0.0 b.com c.com\n*.d.com\n"))
	f.Add([]byte(strings.Repeat("a", 5000) + "\nb.com"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := NewBuilder()
		st, err := Parse(bytes.NewReader(data), b)
		if err != nil {
			t.Fatalf("Parse of %d bytes: %v", len(data), err)
		}
		set := b.Build()
		if set.Len() > st.Domains || st.Domains+st.Skipped > st.Lines*64 {
			t.Fatalf("inconsistent: len %d stats %+v", set.Len(), st)
		}
		// Every plain line that names a domain is found afterwards.
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.ContainsAny(line, "#!@/$[ \t*|") {
				continue
			}
			b2 := NewBuilder()
			if s2, _ := Parse(strings.NewReader(line), b2); s2.Domains == 1 {
				h := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(line, "."), "."))
				if _, ok := set.Contains(h); !ok {
					t.Fatalf("line %q parsed alone but %q is not in the whole list's set", line, h)
				}
			}
		}
	})
}

func BenchmarkContains1M(b *testing.B) {
	bl := NewBuilder()
	if _, err := Parse(bytes.NewReader(genList(1_000_000)), bl); err != nil {
		b.Fatal(err)
	}
	set := bl.Build()
	b.ReportMetric(float64(set.Bytes())/(1<<20), "table-MiB")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if i&1 == 0 {
			set.Contains("api.github.com")
		} else {
			set.Contains("x.d0500000.tracker40.example")
		}
	}
}
