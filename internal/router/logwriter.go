package router

import (
	"io"
	"sync"
	"time"
)

// LogFlushInterval bounds how long a log line waits in a LogWriter.
const LogFlushInterval = 100 * time.Millisecond

// logBufferBytes is how much a LogWriter holds before writing at once.
const logBufferBytes = 32 << 10

// LogWriter batches log lines for an underlying writer (the container's
// stderr). The router logs one line per call, and writing each at once
// would cost a busy router a system call per call; a LogWriter writes when
// 32 KiB are pending, every LogFlushInterval, and on Close. A crash loses
// at most the last interval's lines — the record of calls is the audit
// log, which is durable before each answer completes. Safe for concurrent
// use.
type LogWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
	err error
	// closed sends later writes straight through.
	closed bool
	stop   chan struct{}
	done   chan struct{}
}

// NewLogWriter starts batching lines for w.
func NewLogWriter(w io.Writer) *LogWriter {
	l := &LogWriter{w: w, buf: make([]byte, 0, logBufferBytes), stop: make(chan struct{}), done: make(chan struct{})}
	go l.run()
	return l
}

func (l *LogWriter) run() {
	defer close(l.done)
	t := time.NewTicker(LogFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.Flush()
		}
	}
}

// Write queues p, which should be whole lines (a slog handler writes one
// record per call).
func (l *LogWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf)+len(p) > logBufferBytes {
		l.flushLocked()
	}
	if l.closed || len(p) >= logBufferBytes {
		_, err := l.w.Write(p)
		return len(p), err
	}
	l.buf = append(l.buf, p...)
	return len(p), nil
}

// Flush writes out what is pending.
func (l *LogWriter) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
	return l.err
}

func (l *LogWriter) flushLocked() {
	if len(l.buf) == 0 {
		return
	}
	if _, err := l.w.Write(l.buf); err != nil && l.err == nil {
		l.err = err
	}
	l.buf = l.buf[:0]
}

// Close stops the periodic flush and writes out what is pending. Writes
// after Close go straight through.
func (l *LogWriter) Close() error {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.flushLocked()
	return l.err
}
