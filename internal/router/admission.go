package router

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/kars-io/kars/internal/inference"
)

// The router buffers whole request bodies (it decides on them and may send
// them to several targets) and whole non-streamed answers (it inspects them
// before the agent sees a byte). Unbounded, ten agents' 32 MiB bodies
// exhaust a 512 MiB container. Admission bounds both: a cap on calls in
// flight, and a budget of buffered bytes shared by every call. A call that
// would exceed either is refused at once with 503 and Retry-After — never
// queued, so a flood cannot pile up memory while it waits — and a body
// larger than MaxRequestBytes is refused with 413 from its Content-Length,
// before a byte of it is read.

// Defaults for Options.MaxInflight and Options.BufferBytes.
const (
	DefaultMaxInflight = 2048
	DefaultBufferBytes = 256 << 20
)

// BufferBytesFor is the buffer budget for a container memory limit: a
// quarter of it, so that buffered bodies, their copies in flight and the
// garbage they leave stay under the limit; DefaultBufferBytes when the
// limit is unknown (0).
func BufferBytesFor(memoryLimit int64) int64 {
	if memoryLimit <= 0 {
		return DefaultBufferBytes
	}
	return max(memoryLimit/4, 2*MaxRequestBytes/8)
}

// bufferChunk is the step in which a body of unknown length is read and
// charged to the buffer budget.
const bufferChunk = 64 << 10

// byteBudget is a non-blocking counting semaphore of bytes.
type byteBudget struct {
	mu   sync.Mutex
	free int64
	size int64
}

func newByteBudget(n int64) *byteBudget { return &byteBudget{free: n, size: n} }

// take reserves n bytes, or reports false and reserves nothing.
func (b *byteBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.free {
		return false
	}
	b.free -= n
	return true
}

func (b *byteBudget) give(n int64) {
	b.mu.Lock()
	b.free += n
	b.mu.Unlock()
}

// inUse returns the bytes currently reserved.
func (b *byteBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.size - b.free
}

// errBusy is the refusal when the router is at its bound.
func errBusy(what string) *inference.APIError {
	return &inference.APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "kars_router_busy", Retryable: true,
		Message: "kars-router is at its bound on " + what + "; retry shortly"}
}

// admit counts a call in flight, or refuses it when MaxInflight calls are
// already in flight. done must be called when the call is finished.
func (r *Router) admit(w http.ResponseWriter, d inference.Dialect) (done func(), ok bool) {
	if !r.admitCall(w, d) {
		return nil, false
	}
	return func() { admission{r}.finish(nil) }, true
}

// admitCall is admit for an inference call, which ends with the finisher
// admission instead of a func.
func (r *Router) admitCall(w http.ResponseWriter, d inference.Dialect) bool {
	if n := r.inflight.Add(1); n > r.maxInflight {
		r.inflight.Add(-1)
		r.metrics.admissionRefused.WithLabelValues("inflight").Inc()
		w.Header().Set("Retry-After", "1")
		errBusy("calls in flight ("+strconv.FormatInt(r.maxInflight, 10)+")").Write(w, d)
		return false
	}
	r.metrics.inflight.Inc()
	return true
}

// admission ends an admitted call: it is no longer in flight.
type admission struct{ r *Router }

func (a admission) finish(*Call) {
	a.r.metrics.inflight.Dec()
	a.r.inflight.Add(-1)
}

// errTooLarge is returned by readBounded for a body over its limit.
type errTooLarge struct{ limit int64 }

func (e errTooLarge) Error() string { return fmt.Sprintf("request body exceeds %d bytes", e.limit) }

// errNoBuffer is returned by readBounded when the buffer budget is spent.
var errNoBuffer = errors.New("buffer budget exhausted")

// answerAllowance is taken from the buffer budget with every request body
// and spent on the call's answer, so that a call admitted with its body is
// not refused for want of room for a typical answer.
const answerAllowance = 64 << 10

// readBounded reads body whole, at most limit bytes, charging what it holds
// to the router's buffer budget times factor (the copies the call will
// make of it). prepaid bytes the caller already holds are spent first. A
// declared length is checked and charged before reading; an undeclared
// one is charged chunk by chunk as it arrives. The returned release gives
// back what was taken; it is non-nil whenever err is nil.
func (r *Router) readBounded(body io.Reader, declared, limit, factor, prepaid int64) (b []byte, release func(), err error) {
	if declared > limit {
		return nil, nil, errTooLarge{limit}
	}
	var held int64
	release = func() { r.buffers.give(held) }
	grow := func(to int64) bool {
		if n := (to - int64(cap(b))) * factor; n > 0 {
			spent := min(n, prepaid)
			prepaid -= spent
			if n -= spent; n > 0 && !r.buffers.take(n) {
				return false
			}
			held += n
		}
		nb := make([]byte, len(b), to)
		copy(nb, b)
		b = nb
		return true
	}
	initial := int64(bufferChunk)
	if declared >= 0 {
		initial = declared + 1 // +1 to see EOF without growing
	}
	if !grow(min(initial, limit+1)) {
		r.metrics.admissionRefused.WithLabelValues("buffer").Inc()
		return nil, nil, errNoBuffer
	}
	for {
		if len(b) == cap(b) {
			if int64(len(b)) > limit {
				release()
				return nil, nil, errTooLarge{limit}
			}
			if !grow(min(2*int64(cap(b)), limit+1)) {
				release()
				r.metrics.admissionRefused.WithLabelValues("buffer").Inc()
				return nil, nil, errNoBuffer
			}
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if errors.Is(err, io.EOF) {
			if int64(len(b)) > limit {
				release()
				return nil, nil, errTooLarge{limit}
			}
			return b, release, nil
		}
		if err != nil {
			release()
			return nil, nil, err
		}
	}
}
