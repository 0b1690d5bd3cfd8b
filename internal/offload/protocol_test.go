package offload

import (
	"encoding/json"
	"strings"
	"testing"
)

const sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestParseRequest(t *testing.T) {
	good := []string{
		`{"v":1,"op":"offload","id":"r_1","task":{"title":"analyze_repo","sha256":"` + sha + `","bytes":42},"limits":{"max_tokens":500,"ttl_seconds":600}}`,
		`{"v":1,"op":"offload","id":"r-2","task":{"title":"x","sha256":"` + sha + `","bytes":1}}`,
		`{"v":1,"op":"status","id":"s1"}`,
		`{"v":1,"op":"status","id":"s1","offload":"0123abcd"}`,
		`{"v":1,"op":"ack","id":"a1","offload":"0123abcd"}`,
		`{"v":1,"op":"handoff","id":"h1","offload":"0123abcd"}`,
	}
	for _, g := range good {
		if _, err := ParseRequest([]byte(g)); err != nil {
			t.Errorf("ParseRequest(%s) = %v", g, err)
		}
	}
	bad := map[string]string{
		`{"v":2,"op":"status","id":"s1"}`:                                                       "version",
		`{"v":1,"op":"status","id":"s 1"}`:                                                      `"id"`,
		`{"v":1,"op":"status","id":"s1","id":"s2"}`:                                             "strict JSON",
		`{"v":1,"op":"status","id":"s1","extra":1}`:                                             "unknown field",
		`{"v":1,"op":"status","id":"s1"} {}`:                                                    "trailing",
		`{"v":1,"op":"delete","id":"s1"}`:                                                       "unknown op",
		`{"v":1,"op":"ack","id":"a1"}`:                                                          `names the "offload"`,
		`{"v":1,"op":"ack","id":"a1","offload":"../etc"}`:                                       "not an offload id",
		`{"v":1,"op":"offload","id":"r1"}`:                                                      `declares its "task"`,
		`{"v":1,"op":"offload","id":"r1","task":{"title":"","sha256":"` + sha + `","bytes":1}}`: "task.title",
		`{"v":1,"op":"offload","id":"r1","task":{"title":"t","sha256":"` + strings.ToUpper(sha) + `","bytes":1}}`:           "task.sha256",
		`{"v":1,"op":"offload","id":"r1","task":{"title":"t","sha256":"` + sha + `","bytes":0}}`:                            "task.bytes",
		`{"v":1,"op":"offload","id":"r1","task":{"title":"t","sha256":"` + sha + `","bytes":1},"limits":{"max_tokens":-1}}`: "limits",
		`{"v":1,"op":"offload","id":"r1","offload":"0123abcd","task":{"title":"t","sha256":"` + sha + `","bytes":1}}`:       "names no",
		`{"v":1,"op":"status","id":"s1","limits":{}}`:                                                                       "takes no",
	}
	for in, want := range bad {
		if _, err := ParseRequest([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseRequest(%s) = %v, want an error saying %q", in, err, want)
		}
	}
	if _, err := ParseRequest([]byte(`{"v":1,"op":"status","id":"` + strings.Repeat("x", MaxMessage) + `"}`)); err == nil {
		t.Error("an oversized message was accepted")
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range []Message{
		Answer("r1", Message{Offload: &Info{ID: "0123abcd", Phase: PhaseCreating, Sandbox: "kars-offload-0123abcd/offload-0123abcd"}}),
		Refuse("r2", &Error{Code: CodeSlots, Message: "no"}),
		NewEvent(EventReady, &Info{ID: "0123abcd", Phase: PhaseReady, DID: "did:mesh:00"}, nil),
		NewEvent(EventRevoked, nil, &Error{Code: CodeRevoked, Message: "gone"}),
	} {
		raw, _ := json.Marshal(m)
		got, err := ParseMessage(raw)
		if err != nil {
			t.Fatalf("ParseMessage(%s): %v", raw, err)
		}
		again, _ := json.Marshal(got)
		if string(again) != string(raw) {
			t.Fatalf("round trip changed the message:\n%s\n%s", raw, again)
		}
	}
	if m := Refuse("r", &Error{Code: "x"}); m.OK {
		t.Fatal("a refusal reads as OK")
	}
}

// FuzzParseRequest: a peer's request is untrusted; whatever it sends,
// ParseRequest returns an error or a request that re-encodes to a message
// it accepts again (no panic, no half-checked request).
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"v":1,"op":"offload","id":"r_1","task":{"title":"analyze_repo","sha256":"` + sha + `","bytes":42},"limits":{"max_tokens":500}}`))
	f.Add([]byte(`{"v":1,"op":"ack","id":"a1","offload":"0123abcd"}`))
	f.Add([]byte(`{"v":1,"op":"status","id":"s1","id":"s2"}`))
	f.Add([]byte(`{"v":1,"op":"handoff","id":"h","offload":"0123abcd","task":null}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := ParseRequest(raw)
		if err != nil {
			return
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseRequest(again); err != nil {
			t.Fatalf("accepted %q but not its re-encoding %s: %v", raw, again, err)
		}
	})
}

func FuzzParseMessage(f *testing.F) {
	raw, _ := json.Marshal(NewEvent(EventReady, &Info{ID: "0123abcd", Phase: PhaseReady}, nil))
	f.Add(raw)
	f.Add([]byte(`{"v":1,"op":"answer","re":"r","ok":false,"error":{"code":"slots_exhausted","message":"x"}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := ParseMessage(raw)
		if err != nil {
			return
		}
		if m.Op != OpAnswer && m.Op != OpEvent {
			t.Fatalf("accepted op %q", m.Op)
		}
	})
}
