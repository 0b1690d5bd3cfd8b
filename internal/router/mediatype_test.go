package router

import (
	"mime"
	"testing"
)

// FuzzMediaType holds mediaType's fast path to mime.ParseMediaType.
func FuzzMediaType(f *testing.F) {
	for _, s := range []string{"application/json", "text/event-stream", "application/json; charset=utf-8",
		"Application/JSON", "a/b/c", "/json", "text/", "", "application/vnd.api+json", "x-y.z/1.0", "text/plain;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		want, _, _ := mime.ParseMediaType(v)
		if got := mediaType(v); got != want {
			t.Fatalf("mediaType(%q) = %q, mime.ParseMediaType says %q", v, got, want)
		}
	})
}
