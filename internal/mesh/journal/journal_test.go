package journal

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func collect(t *testing.T, path string) (*Log, []string) {
	t.Helper()
	var got []string
	l, err := Open(path, func(r []byte) error { got = append(got, string(r)); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return l, got
}

func TestAppendReplay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	l, got := collect(t, path)
	if len(got) != 0 {
		t.Fatal(got)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if err := l.Commit([]byte(fmt.Sprint(g, "-", i))); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	l.Close()
	_, got = collect(t, path)
	if len(got) != 400 {
		t.Fatalf("replayed %d records, want 400", len(got))
	}
	// Per goroutine, order is kept.
	next := map[string]int{}
	for _, r := range got {
		var g, i int
		fmt.Sscanf(r, "%d-%d", &g, &i)
		k := fmt.Sprint(g)
		if next[k] != i {
			t.Fatalf("goroutine %d: record %d after %d", g, i, next[k]-1)
		}
		next[k]++
	}
}

// A crash mid-write leaves a partial record: every torn length is cut
// off, and records appended after reopening follow the last whole one.
func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "j")
	l, _ := collect(t, path)
	l.Commit([]byte("one"))
	l.Commit([]byte("two"))
	l.Close()
	whole, _ := os.ReadFile(path)
	third := frame(nil, []byte("three-is-longer"))
	for cut := 1; cut < len(third); cut++ {
		os.WriteFile(path, append(bytes.Clone(whole), third[:cut]...), 0o600)
		l, got := collect(t, path)
		if len(got) != 2 {
			t.Fatalf("cut %d: replayed %v", cut, got)
		}
		l.Commit([]byte("four"))
		l.Close()
		_, got = collect(t, path)
		if fmt.Sprint(got) != "[one two four]" {
			t.Fatalf("cut %d: after append %v", cut, got)
		}
	}
	// A flipped bit in the last record is a corrupt tail too.
	bad := bytes.Clone(whole)
	bad[len(bad)-1] ^= 1
	os.WriteFile(path, bad, 0o600)
	if _, got := collect(t, path); fmt.Sprint(got) != "[one]" {
		t.Fatalf("corrupt record replayed: %v", got)
	}
}

func TestRewrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	l, _ := collect(t, path)
	for i := range 100 {
		l.Commit([]byte(fmt.Sprint("r", i)))
	}
	before := l.Size()
	tk := l.Append([]byte("queued"))
	err := l.Rewrite(func(emit func([]byte)) error {
		emit([]byte("live1"))
		emit([]byte("live2"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Wait(tk); err != nil {
		t.Fatal(err)
	}
	if l.Size() >= before {
		t.Errorf("size %d after compaction, %d before", l.Size(), before)
	}
	l.Commit([]byte("after"))
	l.Close()
	if _, got := collect(t, path); fmt.Sprint(got) != "[live1 live2 after]" {
		t.Fatalf("after rewrite: %v", got)
	}
	if _, err := os.Stat(path + ".compact"); !os.IsNotExist(err) {
		t.Error("compaction file left behind")
	}
}

// Records nobody waits for still reach the disk, without Close.
func TestBackgroundFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	l, _ := collect(t, path)
	defer l.Close()
	l.Append([]byte("unwaited"))
	for range 500 {
		if l.Size() > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, got := collect(t, path) // a second reader sees it on disk
	if fmt.Sprint(got) != "[unwaited]" {
		t.Fatalf("on disk: %v", got)
	}
}

func TestReplayErrorFailsOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	l, _ := collect(t, path)
	l.Commit([]byte("x"))
	l.Close()
	if _, err := Open(path, func([]byte) error { return fmt.Errorf("bad record") }); err == nil {
		t.Fatal("open succeeded past a replay error")
	}
}

func BenchmarkCommit(b *testing.B) {
	l, _ := Open(filepath.Join(b.TempDir(), "j"), func([]byte) error { return nil })
	defer l.Close()
	rec := make([]byte, 1024)
	b.SetBytes(int64(len(rec)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Commit(rec); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A compaction lets appends go on while it writes: records appended
// between BeginCompaction and Finish land after the snapshot, and their
// waiters are released once the new file is in place.
func TestCompactionWithConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	l, _ := collect(t, path)
	for i := range 50 {
		l.Commit([]byte(fmt.Sprint("old", i)))
	}
	queued := l.Append([]byte("superseded")) // part of the snapshot's state
	c, err := l.BeginCompaction()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Commit([]byte("during")) }()
	time.Sleep(20 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("an append was durable before the compaction finished: %v", err)
	default:
	}
	if err := c.Finish([][]byte{[]byte("live1"), []byte("live2")}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := l.Wait(queued); err != nil {
		t.Fatal(err)
	}
	l.Commit([]byte("after"))
	l.Close()
	if _, got := collect(t, path); fmt.Sprint(got) != "[live1 live2 during after]" {
		t.Fatalf("after compaction: %v", got)
	}
}
