package safety

import (
	"bytes"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/kars-io/kars/internal/routerconfig"
)

// azureBody is a chat completion as Azure OpenAI returns it, with the
// completion's hate severity set.
func azureBody(hate string, jailbreak bool) []byte {
	jb := "false"
	if jailbreak {
		jb = "true"
	}
	return []byte(`{"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"` + hate + `"},` +
		`"self_harm":{"filtered":false,"severity":"safe"},"protected_material_text":{"filtered":false,"detected":false}},` +
		`"finish_reason":"stop","index":0,"message":{"content":"x","role":"assistant"}}],` +
		`"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},` +
		`"jailbreak":{"filtered":false,"detected":` + jb + `}}}]}`)
}

func TestFloors(t *testing.T) {
	p := NewPolicy(&routerconfig.ContentSafety{Hate: "Medium"})
	for sev, block := range map[string]bool{"safe": false, "low": false, "medium": false, "high": true} {
		if v := p.CheckBody(azureBody(sev, false)); v.Block != block {
			t.Errorf("hate=%s: block=%v, want %v (%s)", sev, v.Block, block, v.Reason)
		}
	}
	// The default floor is Low.
	if v := NewPolicy(nil).CheckBody(azureBody("medium", false)); !v.Block || !strings.Contains(v.Reason, "hate") {
		t.Fatalf("default floor: %+v", v)
	}
}

func TestDetections(t *testing.T) {
	if v := NewPolicy(nil).CheckBody(azureBody("safe", true)); !v.Block || !strings.Contains(v.Reason, "jailbreak") {
		t.Fatalf("jailbreak: %+v", v)
	}
	off := false
	if v := NewPolicy(&routerconfig.ContentSafety{BlockJailbreak: &off}).CheckBody(azureBody("safe", true)); v.Block {
		t.Fatalf("jailbreak blocking disabled but blocked: %+v", v)
	}
	inner := []byte(`{"error":{"code":"content_filter","innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"violence":{"filtered":true,"severity":"high"}}}}}`)
	if v := NewPolicy(nil).CheckBody(inner); !v.Block || v.Findings[0].Category != "violence" {
		t.Fatalf("innererror: %+v", v)
	}
}

func TestRequireShields(t *testing.T) {
	p := NewPolicy(&routerconfig.ContentSafety{RequirePromptShields: true})
	if v := p.CheckBody([]byte(`{"choices":[]}`)); !v.Block {
		t.Fatal("unannotated body passed")
	}
	if v := p.CheckBody(azureBody("safe", false)); v.Block {
		t.Fatalf("annotated body blocked: %s", v.Reason)
	}
	s := p.NewStream()
	if v := s.Event([]byte(`{"choices":[{"delta":{"content":"hi"}}]}`)); !v.Block {
		t.Fatal("content before shields passed")
	}
	s = p.NewStream()
	s.Event([]byte(`{"choices":[],"prompt_filter_results":[{"content_filter_results":{"jailbreak":{"filtered":false,"detected":false}}}]}`))
	if v := s.Event([]byte(`{"choices":[{"delta":{"content":"hi"}}]}`)); v.Block {
		t.Fatalf("content after shields blocked: %s", v.Reason)
	}
}

// FuzzCheckBody: upstream bodies and stream chunks are untrusted.
func FuzzCheckBody(f *testing.F) {
	f.Add(azureBody("high", true))
	f.Add([]byte(`{"prompt_annotations":[{"content_filter_results":{"jailbreak":{"detected":true}}}]}`))
	p := NewPolicy(&routerconfig.ContentSafety{RequirePromptShields: true})
	f.Fuzz(func(t *testing.T, body []byte) {
		v := p.CheckBody(body)
		if v.Block && v.Reason == "" {
			t.Fatal("a block without a reason")
		}
		p.NewStream().Event(body)
	})
}

// azureAnswer is a whole chat completion as the fake Azure OpenAI upstream
// of the router's benchmarks answers it: every annotation Azure sends, all
// safe.
const azureAnswer = `{"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"protected_material_code":{"detected":false,"filtered":false},"protected_material_text":{"detected":false,"filtered":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 ","refusal":null,"role":"assistant"}}],"created":1796622270,"id":"chatcmpl-fake","model":"gpt-4.1","object":"chat.completion","prompt_filter_results":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"detected":false,"filtered":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"prompt_index":0}],"system_fingerprint":"fp_fake","usage":{"completion_tokens":12,"prompt_tokens":22,"total_tokens":34}}`

// BenchmarkCheckBody is the check the router runs on every whole answer.
func BenchmarkCheckBody(b *testing.B) {
	p := NewPolicy(&routerconfig.ContentSafety{Hate: "Low", SelfHarm: "Low", Sexual: "Low", Violence: "Low"})
	body := []byte(azureAnswer)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	runtime.LockOSThread() // threadCPU measures this thread
	defer runtime.UnlockOSThread()
	cpu0 := threadCPU()
	for b.Loop() {
		if v := p.CheckBody(body); v.Block || len(v.Findings) != 0 {
			b.Fatalf("%+v", v)
		}
	}
	b.ReportMetric(float64(threadCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// FuzzWalkerMatchesGJSON holds the single-pass checks to the verdicts of
// the gjson implementation they replaced (ref_test.go), for whole bodies
// and for a stream of events, under a policy that requires shields and one
// that does not.
func FuzzWalkerMatchesGJSON(f *testing.F) {
	f.Add([]byte(azureAnswer))
	f.Add(azureBody("high", true))
	f.Add(azureBody("Medium", false))
	f.Add([]byte(`{"prompt_annotations":[{"content_filter_results":{"jailbreak":{"detected":true}}}]}`))
	f.Add([]byte(`{"error":{"code":"content_filter","innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"},"jailbreak":{"filtered":false,"detected":false}}}}}`))
	f.Add([]byte(`{"error":{"innererror":5,"innererror":{"content_filter_result":{"violence":{"severity":"HIGH"}}}}}`))
	f.Add([]byte(`{"choi\u0063es":[{"content_filter_results":{"h\u0061te":{"severity":"l\u006fw"}},"finish_reason":"content_\u0066ilter"}],"choices":[]}`))
	f.Add([]byte(`{"choices":{"a":{"delta":{"content":"x"}}},"type":"content_block_delta"}`))
	f.Add([]byte(`{"choices":[{"delta":{"tool_calls":null}},{"text":7}], "prompt_filter_results": {"x": {"content_filter_results": {"self_harm": {"severity": "medium", "filtered": true}}}}}`))
	f.Add([]byte(` [ {"choices":[]} ] `))
	f.Add([]byte(`{"choices":[{"content_filter_results":{"hate":{"severity":"ſafe"},"sexual":{"severity":"\u0053AFE"},"violence":[],"x":{"filtered":true,"filtered":false}}}]}`))
	policies := []*Policy{
		NewPolicy(&routerconfig.ContentSafety{Hate: "Low", SelfHarm: "Medium", Sexual: "High", Violence: "Low"}),
		NewPolicy(&routerconfig.ContentSafety{RequirePromptShields: true}),
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, p := range policies {
			got, want := p.CheckBody(body), p.refCheckBody(body)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("CheckBody(%q):\n got %+v\nwant %+v", body, got, want)
			}
			s, ref := p.NewStream(), p.refNewStream()
			for _, ev := range bytes.Split(body, []byte("\n")) {
				got, want := s.Event(ev), ref.Event(ev)
				if !reflect.DeepEqual(got, want) || s.shielded != ref.shielded {
					t.Fatalf("Event(%q):\n got %+v\nwant %+v", ev, got, want)
				}
			}
		}
	})
}
