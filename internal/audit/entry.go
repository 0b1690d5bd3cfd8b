package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"maps"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Entry is one line of the audit log: a Record plus the fields the log adds.
type Entry struct {
	Seq  uint64
	Time time.Time
	Record
	// Prev is the hex hash of the previous entry (GenesisHash for the
	// first entry of a log).
	Prev string
	// Hash is the hex SHA-256 of this entry's canonical bytes.
	Hash string
}

// GenesisHash is the Prev of a log's first entry.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// TimeLayout is the fixed-width UTC timestamp of entries and checkpoints.
const TimeLayout = "2006-01-02T15:04:05.000000000Z"

// Limits on what one entry may carry. Longer strings are truncated (with
// truncatedMark appended) rather than refused, because refusing an audit
// append fails the audited action; the payload itself is never logged, only
// its hash, so these fields stay small in practice.
const (
	maxFieldBytes = 4096
	maxAttrs      = 64
	truncatedMark = "…[truncated]"
)

// appendCanonical appends the entry's canonical bytes (see the package
// documentation) to dst: the JSON object with every field except "hash",
// in fixed order, with the fixed string escaping of appendString. It is
// appendHead, appendBody and appendTail in a row; the Writer calls those
// separately so that the body is encoded outside its lock.
func appendCanonical(dst []byte, e *Entry) []byte {
	dst = appendHead(dst, e.Seq, e.Time)
	dst = appendBody(dst, e)
	return appendTail(dst, e.Prev)
}

// appendHead appends {"seq":N,"ts":"…" — the members the log assigns.
func appendHead(dst []byte, seq uint64, ts time.Time) []byte {
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"ts":"`...)
	dst = appendTime(dst, ts)
	return append(dst, '"')
}

// appendBody appends the members that come from the Record, from
// ,"sandbox" through the attrs object.
func appendBody(dst []byte, e *Entry) []byte {
	dst = append(dst, `,"sandbox":`...)
	dst = appendString(dst, e.Sandbox)
	dst = append(dst, `,"agent":`...)
	dst = appendString(dst, e.Agent)
	dst = append(dst, `,"action":`...)
	dst = appendString(dst, e.Action)
	dst = append(dst, `,"decision":`...)
	dst = appendString(dst, e.Decision)
	dst = append(dst, `,"rule":`...)
	dst = appendString(dst, e.Rule)
	dst = append(dst, `,"reason":`...)
	dst = appendString(dst, e.Reason)
	dst = append(dst, `,"payload_sha256":`...)
	dst = appendString(dst, e.PayloadSHA256)
	dst = append(dst, `,"latency_ns":`...)
	dst = strconv.AppendInt(dst, int64(e.Latency), 10)
	dst = append(dst, `,"attrs":{`...)
	var stack [16]string
	keys := stack[:0]
	for k := range e.Attrs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, k)
		dst = append(dst, ':')
		dst = appendString(dst, e.Attrs[k])
	}
	return append(dst, '}')
}

// appendTail closes the canonical bytes with the chain link.
func appendTail(dst []byte, prev string) []byte {
	dst = append(dst, `,"prev":"`...)
	dst = append(dst, prev...)
	return append(dst, `"}`...)
}

// appendTime appends t in TimeLayout. It is the hand-written equivalent of
// t.UTC().AppendFormat(dst, TimeLayout), which parses the layout on every
// call; TestAppendTimeMatchesLayout keeps the two identical.
func appendTime(dst []byte, t time.Time) []byte {
	t = t.UTC()
	y, mo, d := t.Date()
	h, mi, sec := t.Clock()
	dst = appendDigits(dst, y, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, int(mo), 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, d, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, h, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, mi, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, sec, 2)
	dst = append(dst, '.')
	dst = appendDigits(dst, t.Nanosecond(), 9)
	return append(dst, 'Z')
}

// clockCache remembers the formatted date and time of one second, so that
// the writer formats only the nanoseconds of most timestamps (it appends
// under its mutex, one entry after another).
type clockCache struct {
	sec    int64
	prefix []byte // "YYYY-MM-DDTHH:MM:SS." for sec
}

// appendHead is appendHead with the second's prefix cached.
func (c *clockCache) appendHead(dst []byte, seq uint64, ts time.Time) []byte {
	ts = ts.UTC()
	if sec := ts.Unix(); sec != c.sec || c.prefix == nil {
		full := appendTime(c.prefix[:0], ts)
		c.sec, c.prefix = sec, full[:len(full)-10] // drop "nnnnnnnnnZ"
	}
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"ts":"`...)
	dst = append(dst, c.prefix...)
	dst = appendDigits(dst, ts.Nanosecond(), 9)
	return append(dst, `Z"`...)
}

// appendDigits appends v zero-padded to width digits (v >= 0; wider values
// keep all their digits, as AppendFormat does for years past 9999).
func appendDigits(dst []byte, v, width int) []byte {
	var buf [20]byte
	i := len(buf)
	for v >= 10 || width > 1 {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
		width--
	}
	i--
	buf[i] = byte('0' + v)
	return append(dst, buf[i:]...)
}

// appendString appends s as a JSON string: '"' and '\' are escaped with a
// backslash, \n \r \t use their short escapes, every other byte below 0x20
// and 0x7f use \u00xx (lowercase hex), and all other UTF-8 is copied as is.
// s must be valid UTF-8 (sanitize makes it so).
func appendString(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c != 0x7f {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// sanitize makes s valid UTF-8 (invalid bytes become U+FFFD, as a JSON
// decoder would read them) and bounds its length, so that what is hashed is
// exactly what a verifier will decode.
func sanitize(s string) string {
	if len(s) <= maxFieldBytes && utf8.ValidString(s) {
		return s
	}
	s = string(bytes.ToValidUTF8([]byte(s), []byte("\uFFFD")))
	if len(s) > maxFieldBytes {
		cut := maxFieldBytes - len(truncatedMark)
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + truncatedMark
	}
	return s
}

// entryFromRecord builds the log's view of r, sanitised.
func entryFromRecord(r *Record) Entry {
	e := Entry{Record: Record{
		Sandbox:       sanitize(r.Sandbox),
		Agent:         sanitize(r.Agent),
		Action:        sanitize(r.Action),
		Decision:      sanitize(r.Decision),
		Rule:          sanitize(r.Rule),
		Reason:        sanitize(r.Reason),
		PayloadSHA256: sanitize(r.PayloadSHA256),
		Latency:       r.Latency,
	}}
	if len(r.Attrs) > 0 {
		e.Attrs = sanitizeAttrs(r.Attrs)
	}
	return e
}

// sanitizeAttrs returns attrs itself when it is already within bounds (the
// common case: Append seals the entry before it returns, so the caller's map
// is not retained), or a bounded, sanitised copy.
func sanitizeAttrs(attrs map[string]string) map[string]string {
	clean := len(attrs) <= maxAttrs
	for k, v := range attrs {
		if !clean {
			break
		}
		clean = sanitize(k) == k && sanitize(v) == v
	}
	if clean {
		return attrs
	}
	keys := slices.Sorted(maps.Keys(attrs))
	out := make(map[string]string, min(len(keys), maxAttrs)+1)
	for _, k := range keys[:min(len(keys), maxAttrs)] {
		out[sanitize(k)] = sanitize(attrs[k])
	}
	if len(keys) > maxAttrs {
		out["kars.attrs_dropped"] = strconv.Itoa(len(keys) - maxAttrs)
	}
	return out
}

// sealer computes entry hashes and renders lines, reusing its buffers.
type sealer struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

func newSealer() *sealer { return &sealer{h: sha256.New()} }

// seal appends e's line (canonical bytes with the hash spliced in, then a
// newline) to dst and sets e.Hash.
func (s *sealer) seal(dst []byte, e *Entry) []byte {
	start := len(dst)
	dst = appendCanonical(dst, e)
	dst, e.Hash = s.finish(dst, start)
	return dst
}

// finish hashes the canonical bytes dst[start:], splices the hash member in
// before the closing brace and ends the line.
func (s *sealer) finish(dst []byte, start int) ([]byte, string) {
	s.h.Reset()
	s.h.Write(dst[start:])
	s.h.Sum(s.sum[:0])
	var hx [2 * sha256.Size]byte
	hex.Encode(hx[:], s.sum[:])
	dst = dst[:len(dst)-1] // drop the closing brace
	dst = append(dst, `,"hash":"`...)
	dst = append(dst, hx[:]...)
	return append(dst, "\"}\n"...), string(hx[:])
}

// wireEntry is the JSON shape of a line, for strict decoding.
type wireEntry struct {
	Seq           *uint64           `json:"seq"`
	TS            string            `json:"ts"`
	Sandbox       string            `json:"sandbox"`
	Agent         string            `json:"agent"`
	Action        string            `json:"action"`
	Decision      string            `json:"decision"`
	Rule          string            `json:"rule"`
	Reason        string            `json:"reason"`
	PayloadSHA256 string            `json:"payload_sha256"`
	LatencyNS     int64             `json:"latency_ns"`
	Attrs         map[string]string `json:"attrs"`
	Prev          string            `json:"prev"`
	Hash          string            `json:"hash"`
}

// Errors ParseLine reports. errNotCanonical marks a line that decodes but is
// not byte-for-byte what the writer would have produced; errBadHash a
// canonical line whose hash does not match its content.
var (
	errNotCanonical = errors.New("line is not in canonical form")
	errBadHash      = errors.New("hash does not match the entry's content")
)

// ParseLine decodes one log line (without its trailing newline), checks that
// it is in canonical form and that its hash matches its content. On a hash
// mismatch it returns the decoded entry together with the error, so a
// verifier can say which sequence number was altered.
func ParseLine(line []byte) (Entry, error) {
	var w wireEntry
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return Entry{}, fmt.Errorf("not a valid entry: %w", err)
	}
	if dec.More() {
		return Entry{}, fmt.Errorf("not a valid entry: data after the JSON object")
	}
	if w.Seq == nil || w.Attrs == nil {
		return Entry{}, fmt.Errorf("not a valid entry: missing fields")
	}
	ts, err := time.Parse(TimeLayout, w.TS)
	if err != nil {
		return Entry{}, fmt.Errorf("not a valid entry: timestamp: %w", err)
	}
	if !isHex64(w.Prev) || !isHex64(w.Hash) {
		return Entry{}, fmt.Errorf("not a valid entry: prev and hash must be 64 lowercase hex digits")
	}
	e := Entry{Seq: *w.Seq, Time: ts, Prev: w.Prev, Record: Record{Sandbox: w.Sandbox, Agent: w.Agent,
		Action: w.Action, Decision: w.Decision, Rule: w.Rule, Reason: w.Reason, PayloadSHA256: w.PayloadSHA256,
		Latency: time.Duration(w.LatencyNS), Attrs: w.Attrs}}
	if len(e.Attrs) == 0 {
		e.Attrs = nil
	}
	canon := appendCanonical(nil, &e)
	want := append(canon[:len(canon)-1:len(canon)-1], `,"hash":"`...)
	want = append(want, w.Hash...)
	want = append(want, `"}`...)
	if !bytes.Equal(want, line) {
		// Decodes, but is not what the writer produces: re-encoded fields,
		// reordered or repeated keys, a different escaping. The content may
		// read the same, but the bytes that were hashed are gone.
		return e, errNotCanonical
	}
	e.Hash = w.Hash
	sum := sha256.Sum256(canon)
	if hex.EncodeToString(sum[:]) != w.Hash {
		return e, errBadHash
	}
	return e, nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
