package bridge

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzOpenEnvelope: a peer's plaintext is untrusted. Whatever it holds,
// the agent gets valid UTF-8 text, and a kars envelope round-trips.
func FuzzOpenEnvelope(f *testing.F) {
	for _, s := range []string{`{"text":"hi"}`, `{"text":"a","in_reply_to":"m_1"}`, "plain text", "\xff\xfe",
		`{"text":""}`, `{"text":1}`, `[]`, `{"text":"x","text":"y"}`, ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, pt []byte) {
		e := openEnvelope(pt)
		if !utf8.ValidString(e.Text) {
			t.Fatalf("invalid UTF-8 text from %q", pt)
		}
		if e.Text != "" {
			b, _ := json.Marshal(e)
			if again := openEnvelope(b); again != e {
				t.Fatalf("envelope %+v does not round-trip: %+v", e, again)
			}
		}
	})
}

// FuzzParseSend: the agent's send body is untrusted; a body that parses
// names a peer and text and a bounded wait.
func FuzzParseSend(f *testing.F) {
	for _, s := range []string{`{"to":"worker","text":"hi"}`, `{"to":"w","text":"x","awaitReplySeconds":30,"inReplyTo":"m_1"}`,
		`{"to":"w","text":"x","extra":1}`, `{"to":"w","to":"v","text":"x"}`, `{"to":"w","text":"x"} {}`, `{"to":"w","text":"x","awaitReplySeconds":1e9}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		sb, err := parseSend(raw)
		if err != nil {
			return
		}
		if sb.To == "" || sb.Text == "" || sb.AwaitReplySeconds < 0 || sb.AwaitReplySeconds > maxAwait.Seconds() {
			t.Fatalf("accepted %q as %+v", raw, sb)
		}
	})
}
