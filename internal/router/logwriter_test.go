package router

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingWriter records each write it receives.
type countingWriter struct {
	mu     sync.Mutex
	writes int
	buf    bytes.Buffer
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

func (w *countingWriter) state() (int, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes, w.buf.String()
}

func TestLogWriterBatchesLines(t *testing.T) {
	out := &countingWriter{}
	l := NewLogWriter(out)
	for i := range 100 {
		l.Write([]byte(strings.Repeat("x", 10) + string(rune('0'+i%10)) + "\n"))
	}
	// Within an interval the lines are held back, then go out together.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, s := out.state()
		if strings.Count(s, "\n") == 100 {
			if n >= 100 {
				t.Fatalf("%d writes for 100 lines", n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lines not flushed: %d writes, %q", n, s)
		}
		time.Sleep(LogFlushInterval / 4)
	}
	// A full buffer goes out at once; Close writes what is pending and
	// later writes go straight through.
	big := strings.Repeat("y", logBufferBytes-1) + "\n"
	l.Write([]byte("pending\n"))
	l.Write([]byte(big))
	if _, s := out.state(); !strings.Contains(s, "pending\n") {
		t.Fatal("a full buffer was not written out")
	}
	l.Write([]byte("tail\n"))
	l.Close()
	if _, s := out.state(); !strings.HasSuffix(s, big+"tail\n") {
		t.Fatal("Close did not flush")
	}
	l.Write([]byte("after\n"))
	if _, s := out.state(); !strings.HasSuffix(s, "after\n") {
		t.Fatal("a write after Close was held back")
	}
}
