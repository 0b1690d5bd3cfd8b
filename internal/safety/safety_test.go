package safety

import (
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
