package localsubstrate

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// errPreparing says something a pod needs (a runtime environment, an
// unpacked image) is not ready yet; Realize reports it and reconciles again
// when it is.
type errPreparing struct {
	what     string
	progress string
	// failure is the last preparation's error and reason the condition
	// reason RuntimeReady carries; retryAt is when it is tried again.
	failure error
	reason  string
	retryAt time.Time
}

func (e *errPreparing) Error() string {
	if e.failure != nil {
		return fmt.Sprintf("%v; retrying in %s", e.failure, time.Until(e.retryAt).Round(time.Second))
	}
	return e.progress
}

// preparer prepares things in the background, one preparation per key at
// a time, keeps what succeeded and retries failures with backoff.
// Sandboxes ask again on every reconcile; waiters are nudged when a
// preparation ends and again when a retry is due.
type preparer[T any] struct {
	// run prepares key, reporting progress lines.
	run func(ctx context.Context, key string, progress func(string)) (T, error)
	// first is the progress line shown before run reports any.
	first func(key string) string
	// reason names a failure for RuntimeReady.
	reason func(error) string
	// timeout bounds one preparation.
	timeout time.Duration
	// backoff is the first retry delay; it doubles up to maxBackoff.
	backoff, maxBackoff time.Duration

	mu    sync.Mutex
	state map[string]*prepState[T]
}

type prepState[T any] struct {
	done     bool
	value    T
	running  bool
	progress string
	failure  error
	failures int
	retryAt  time.Time
	waiters  []func()
}

func (p *preparer[T]) init() {
	if p.state == nil {
		p.state = map[string]*prepState[T]{}
	}
	if p.backoff == 0 {
		p.backoff = 5 * time.Second
	}
	if p.maxBackoff == 0 {
		p.maxBackoff = 5 * time.Minute
	}
	if p.timeout == 0 {
		p.timeout = 30 * time.Minute
	}
}

// get returns key's prepared value, or an *errPreparing while it is being
// prepared or waiting to retry. notify is called when a preparation it
// waited for ends.
func (p *preparer[T]) get(key string, notify func()) (T, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.init()
	st := p.state[key]
	if st == nil {
		st = &prepState[T]{}
		p.state[key] = st
	}
	var zero T
	if st.done {
		return st.value, nil
	}
	st.waiters = append(st.waiters, notify)
	switch {
	case st.running:
		return zero, &errPreparing{what: key, progress: st.progress}
	case st.failure != nil && time.Now().Before(st.retryAt):
		return zero, &errPreparing{what: key, failure: st.failure, reason: p.reason(st.failure), retryAt: st.retryAt}
	}
	st.running, st.progress = true, p.first(key)
	go p.prepare(key)
	return zero, &errPreparing{what: key, progress: st.progress}
}

func (p *preparer[T]) prepare(key string) {
	progress := func(line string) {
		p.mu.Lock()
		p.state[key].progress = line
		p.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	v, err := p.run(ctx, key, progress)
	p.mu.Lock()
	st := p.state[key]
	st.running = false
	if err != nil {
		st.failures++
		st.failure = err
		d := p.backoff
		for i := 1; i < st.failures && d < p.maxBackoff; i++ {
			d *= 2
		}
		st.retryAt = time.Now().Add(min(d, p.maxBackoff))
	} else {
		st.done, st.value, st.failure, st.failures = true, v, nil, 0
	}
	waiters, retryAt := st.waiters, st.retryAt
	st.waiters = nil
	p.mu.Unlock()
	for _, w := range waiters {
		w()
	}
	if err != nil {
		// Reconcile the waiters again once the retry is due.
		time.AfterFunc(time.Until(retryAt), func() {
			for _, w := range waiters {
				w()
			}
		})
	}
}
