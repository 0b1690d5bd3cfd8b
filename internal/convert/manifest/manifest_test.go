package manifest

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestReadStreams(t *testing.T) {
	const in = `# a preamble only
---
apiVersion: v1
kind: List
items:
- apiVersion: kagent.dev/v1alpha2
  kind: Agent
  metadata: {name: a, namespace: ns}
- apiVersion: kagent.dev/v1alpha2
  kind: ModelConfig
  metadata: {name: m, namespace: ns}
---
{"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": "s"}}
---
---
apiVersion: kagent.dev/v1alpha2
kind: AgentList
items: []
`
	objs, err := Read(strings.NewReader(in), "in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range objs {
		got = append(got, o.Source+" "+o.Ref())
	}
	want := []string{
		"in.yaml#2.items[0] kagent.dev/v1alpha2 Agent ns/a",
		"in.yaml#2.items[1] kagent.dev/v1alpha2 ModelConfig ns/m",
		"in.yaml#3 agents.x-k8s.io/v1beta1 Sandbox s",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestReadRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		in, want string
		secret   bool
	}{
		"malformed YAML":   {"apiVersion: v1\nkind: [unclosed\n", "in.yaml#1: malformed YAML", false},
		"tab indentation":  {"apiVersion: v1\nkind: ConfigMap\nmetadata:\n\tname: x\n", "in.yaml#1: malformed YAML", false},
		"not an object":    {"- a\n- b\n", "not a Kubernetes object", false},
		"no kind":          {"apiVersion: v1\nmetadata: {name: a}\n", "no apiVersion or kind", false},
		"bad apiVersion":   {"apiVersion: a/b/c\nkind: X\n", `apiVersion "a/b/c"`, false},
		"secret":           {"apiVersion: v1\nkind: Secret\nmetadata: {name: key}\nstringData: {k: v}\n", "in.yaml#1: v1 Secret key: refusing a Secret", true},
		"secret in list":   {"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: k}}\n", "in.yaml#1.items[0]: v1 Secret k", true},
		"secret after ok":  {"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: k}\n", "in.yaml#2", true},
		"list in list":     {"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n", "a list inside a list", false},
		"metadata not map": {"apiVersion: v1\nkind: ConfigMap\nmetadata: 3\n", "metadata must be a mapping", false},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Read(strings.NewReader(tc.in), "in.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if errors.Is(err, ErrSecret) != tc.secret {
				t.Errorf("errors.Is(err, ErrSecret) = %v", !tc.secret)
			}
		})
	}
}

func TestReadBounds(t *testing.T) {
	big := bytes.Repeat([]byte("#"), MaxBytes+1)
	if _, err := Read(bytes.NewReader(big), "big"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized input: %v", err)
	}
	deep := "apiVersion: v1\nkind: ConfigMap\ndata: " + strings.Repeat("[", 100) + strings.Repeat("]", 100) + "\n"
	if _, err := Read(strings.NewReader(deep), "deep"); err == nil || !strings.Contains(err.Error(), "nested more than") {
		t.Errorf("deep input: %v", err)
	}
}

func TestEncode(t *testing.T) {
	out, err := Encode([]any{map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "x", "uid": "1"}, "spec": map[string]any{}, "status": map[string]any{"phase": "Active"}}},
		[]string{"title", "two\nlines"})
	if err != nil {
		t.Fatal(err)
	}
	want := "# title\n# two\n# lines\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n"
	if string(out) != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
	// The output reads back.
	objs, err := Read(bytes.NewReader(out), "out")
	if err != nil || len(objs) != 1 || objs[0].GetName() != "x" {
		t.Errorf("read back: %v %v", objs, err)
	}
	if _, err := Encode([]any{map[string]any{"metadata": map[string]any{}}}, nil); err == nil {
		t.Error("an object without apiVersion/kind was encoded")
	}
}

func FuzzRead(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: kagent.dev/v1alpha2, kind: Agent, metadata: {name: a}}\n"))
	f.Add([]byte("a: &a [*a, *a]\nb: &b [*a, *a]\n"))
	f.Add([]byte("---\n---\n# c\n{\"apiVersion\":\"v1\",\"kind\":\"Secret\"}"))
	f.Add([]byte("apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {name: s}\nspec: {podTemplate: {spec: {containers: [{name: a, image: b}]}}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Read(bytes.NewReader(data), "fuzz")
		if err != nil {
			return
		}
		for _, o := range objs {
			if o.GetAPIVersion() == "" || o.GetKind() == "" {
				t.Fatalf("accepted an object without apiVersion/kind: %v", o.Object)
			}
			if o.GetAPIVersion() == "v1" && o.GetKind() == "Secret" {
				t.Fatal("accepted a Secret")
			}
		}
	})
}
