package credbind

import (
	"bytes"
	"errors"
	"io"
)

// ErrPlaceholderInBody is returned by a ScanReader that met the marker. A
// request body is never a place for a credential, so the request is
// refused: the router aborts the upstream request (an incomplete body is
// never processed) and answers 403.
var ErrPlaceholderInBody = errors.New("a credential placeholder is in the request body")

// ScanReader returns a reader that passes r through and fails with
// ErrPlaceholderInBody — before returning the bytes that complete the
// marker — as soon as the marker appears, also across reads.
func ScanReader(r io.Reader) io.Reader { return &scanReader{r: r} }

type scanReader struct {
	r    io.Reader
	tail []byte // the last len(Marker)-1 bytes returned
	err  error
}

func (s *scanReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	if n > 0 {
		win := append(s.tail, p[:n]...)
		if bytes.Contains(win, []byte(Marker)) {
			s.err = ErrPlaceholderInBody
			return 0, s.err
		}
		keep := len(Marker) - 1
		if len(win) > keep {
			win = win[len(win)-keep:]
		}
		s.tail = append(s.tail[:0], win...)
	}
	return n, err
}

// Scrub returns a reader of r with every secrets[i] replaced by
// replacements[i] (its placeholder), also across reads: an upstream that
// echoes a credential — in an error message, a "whoami" answer — never
// hands it to the agent. The output is longer or shorter than the input
// when the lengths differ, so the caller drops Content-Length.
func Scrub(r io.Reader, secrets, replacements [][]byte) io.Reader {
	sc := &scrubber{r: r}
	maxLen := 0
	for i, s := range secrets {
		if len(s) > 0 && i < len(replacements) {
			sc.secrets = append(sc.secrets, s)
			sc.repls = append(sc.repls, replacements[i])
			maxLen = max(maxLen, len(s))
		}
	}
	if len(sc.secrets) == 0 {
		return r
	}
	sc.hold = maxLen - 1
	return sc
}

// ScrubString replaces every secret in s by its placeholder.
func ScrubString(s string, secrets, replacements [][]byte) string {
	for i, sec := range secrets {
		if len(sec) > 0 && i < len(replacements) {
			s = string(bytes.ReplaceAll([]byte(s), sec, replacements[i]))
		}
	}
	return s
}

type scrubber struct {
	r       io.Reader
	secrets [][]byte
	repls   [][]byte
	hold    int    // bytes kept back: a secret may start in them
	buf     []byte // read, not yet scrubbed or returned
	out     []byte // scrubbed, not yet returned
	eof     bool
	err     error
}

func (s *scrubber) Read(p []byte) (int, error) {
	for len(s.out) == 0 {
		if s.eof {
			if len(s.buf) > 0 {
				s.out, s.buf = s.replace(s.buf), nil
				continue
			}
			return 0, s.err
		}
		chunk := make([]byte, 32<<10)
		n, err := s.r.Read(chunk)
		s.buf = append(s.buf, chunk[:n]...)
		if err != nil {
			s.eof, s.err = true, err
			continue
		}
		// Everything but the last hold bytes can be settled: a secret
		// that ends in them starts in them too... unless it started
		// earlier, so settle only up to a point no secret straddles.
		cut := len(s.buf) - s.hold
		if cut <= 0 {
			continue
		}
		cut = s.safeCut(cut)
		s.out = s.replace(s.buf[:cut])
		s.buf = append([]byte(nil), s.buf[cut:]...)
	}
	n := copy(p, s.out)
	s.out = s.out[n:]
	return n, nil
}

// safeCut moves cut back so that no occurrence of a secret starts before
// it and ends after it.
func (s *scrubber) safeCut(cut int) int {
	for {
		moved := false
		for _, sec := range s.secrets {
			lo := max(0, cut-len(sec)+1)
			for i := lo; i < cut; i++ {
				if i+len(sec) > cut && i+len(sec) <= len(s.buf) && bytes.Equal(s.buf[i:i+len(sec)], sec) {
					cut, moved = i, true
					break
				}
			}
		}
		if !moved {
			return cut
		}
	}
}

func (s *scrubber) replace(b []byte) []byte {
	for i, sec := range s.secrets {
		b = bytes.ReplaceAll(b, sec, s.repls[i])
	}
	return b
}
