package mcpauthtest

import (
	"bytes"
	"io"
	"net/http"
	"sync"
)

// Wire records everything that crosses an HTTP handler: request headers
// and bodies, response headers and bodies — what tests search for tokens
// that must never reach the agent's side. The zero value is ready.
type Wire struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Wrap returns h with its traffic recorded on w.
func (w *Wire) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.mu.Lock()
		r.Header.Write(&w.buf)
		w.buf.Write(body)
		w.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		h.ServeHTTP(tee{rw, w}, r)
	})
}

// String is everything recorded so far.
func (w *Wire) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

type tee struct {
	http.ResponseWriter
	w *Wire
}

func (t tee) Write(b []byte) (int, error) {
	t.w.mu.Lock()
	t.w.buf.Write(b)
	t.w.mu.Unlock()
	return t.ResponseWriter.Write(b)
}

func (t tee) WriteHeader(code int) {
	t.w.mu.Lock()
	t.ResponseWriter.Header().Write(&t.w.buf)
	t.w.mu.Unlock()
	t.ResponseWriter.WriteHeader(code)
}
