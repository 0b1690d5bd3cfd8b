package runtimeenv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
)

// Reasons an environment could not be prepared, as status condition
// reasons (RuntimeReady=False).
const (
	ReasonRegistryUnreachable = "RuntimeRegistryUnreachable"
	ReasonUnknownVersion      = "RuntimeVersionNotFound"
	ReasonDiskFull            = "RuntimeDiskFull"
	ReasonUnknownRuntime      = "RuntimeUnknown"
	ReasonInterrupted         = "RuntimePrepareInterrupted"
	ReasonInvalid             = "RuntimeCacheInvalid"
	ReasonInstallFailed       = "RuntimeInstallFailed"
)

// Error is a failure to prepare an environment: the reason, the runtime,
// the cause and the installer's last output.
type Error struct {
	Reason  string
	Runtime string
	Err     error
	// Output is the end of the installer's output.
	Output string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("prepare the %s runtime environment: %v", e.Runtime, e.Err)
	if line := lastLine(e.Output); line != "" {
		msg += " (" + line + ")"
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// classify names the reason of an installer failure from the error and
// the installer's output (pip and npm say what went wrong in words).
func classify(runtime string, err error, log *tail) *Error {
	out := ""
	if log != nil {
		out = log.String()
	}
	e := &Error{Reason: ReasonInstallFailed, Runtime: runtime, Err: err, Output: out}
	low := strings.ToLower(out + "\n" + err.Error())
	switch {
	case errors.Is(err, syscall.ENOSPC) || strings.Contains(low, "no space left on device") || strings.Contains(low, "enospc"):
		e.Reason = ReasonDiskFull
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		e.Reason = ReasonInterrupted
	case strings.Contains(low, "no matching distribution found") || strings.Contains(low, "etarget") ||
		strings.Contains(low, "notarget") || strings.Contains(low, "could not find a version that satisfies") ||
		strings.Contains(low, "e404"):
		e.Reason = ReasonUnknownVersion
	case strings.Contains(low, "network is unreachable") || strings.Contains(low, "connection refused") ||
		strings.Contains(low, "enotfound") || strings.Contains(low, "eai_again") || strings.Contains(low, "econnrefused") ||
		strings.Contains(low, "temporary failure in name resolution") || strings.Contains(low, "max retries exceeded") ||
		strings.Contains(low, "etimedout") || strings.Contains(low, "econnreset") || strings.Contains(low, "failed to establish a new connection"):
		e.Reason = ReasonRegistryUnreachable
	}
	return e
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			if len(l) > 300 {
				l = l[:300] + "…"
			}
			return l
		}
	}
	return ""
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
