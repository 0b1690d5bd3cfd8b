// Package manifest reads the Kubernetes manifests that `kars migrate` and
// `kars convert` take as input: a stream of YAML or JSON documents, each an
// object or a list of objects (`kubectl get -o yaml` prints a v1 List).
//
// The input is untrusted: Read bounds its size and nesting, refuses
// malformed documents with the document's number, and refuses any Secret
// outright, because a converter must never carry credentials from one
// manifest into another (kars keeps them in the router's reach only). It is
// pure; reading files and directories is the caller's job.
package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// MaxBytes bounds one input stream. Agent manifests are a few KiB; a
// larger stream is a mistake (or an attack on the parser).
const MaxBytes = 8 << 20

// maxDepth bounds the nesting of a document, so that a hostile stream
// cannot exhaust the stack of code that walks it.
const maxDepth = 64

// Object is one object of the input and where it came from.
type Object struct {
	*unstructured.Unstructured
	// Source is "<name>#<document>" or "<name>#<document>.items[<i>]".
	Source string
}

// Ref names the object for messages: "kagent.dev/v1alpha2 Agent kagent/k8s-agent".
func (o Object) Ref() string {
	name := o.GetName()
	if ns := o.GetNamespace(); ns != "" {
		name = ns + "/" + name
	}
	return o.GetAPIVersion() + " " + o.GetKind() + " " + name
}

// Error is a problem with one document of the input.
type Error struct {
	Source string
	Err    error
}

func (e *Error) Error() string { return e.Source + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ErrSecret reports a Secret in the input.
var ErrSecret = errors.New("refusing a Secret in the input: converters never copy credentials between manifests; " +
	"create the Secret in the target namespace yourself (only the router mounts it, never the agent) and leave it out of the input")

// Read decodes every document of r. name labels the stream in errors (a
// file name, or "stdin"). Empty documents are skipped; lists are expanded
// into their items.
func Read(r io.Reader, name string) ([]Object, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("%s is larger than %d MiB; split it", name, MaxBytes>>20)
	}
	var out []Object
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		src := fmt.Sprintf("%s#%d", name, n)
		if err != nil {
			return nil, &Error{Source: src, Err: fmt.Errorf("malformed YAML: %w", err)}
		}
		objs, err := decode(doc, src)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
}

func decode(doc []byte, src string) ([]Object, error) {
	if len(bytes.TrimSpace(stripComments(doc))) == 0 {
		return nil, nil
	}
	raw, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, &Error{Source: src, Err: fmt.Errorf("malformed YAML: %w", err)}
	}
	if t := bytes.TrimSpace(raw); bytes.Equal(t, []byte("null")) {
		return nil, nil
	}
	var m map[string]any
	if err := utiljson.Unmarshal(raw, &m); err != nil {
		return nil, &Error{Source: src, Err: fmt.Errorf("not a Kubernetes object (a YAML or JSON mapping with apiVersion and kind): %w", err)}
	}
	if depth(m, 0) > maxDepth {
		return nil, &Error{Source: src, Err: fmt.Errorf("nested more than %d levels deep", maxDepth)}
	}
	u := &unstructured.Unstructured{Object: m}
	if err := check(u); err != nil {
		return nil, &Error{Source: src, Err: err}
	}
	if !isList(u) {
		return []Object{{Unstructured: u, Source: src}}, nil
	}
	items, ok := m["items"].([]any)
	if !ok && m["items"] != nil {
		return nil, &Error{Source: src, Err: fmt.Errorf("%s: items must be a list", u.GetKind())}
	}
	out := make([]Object, 0, len(items))
	for i, it := range items {
		isrc := fmt.Sprintf("%s.items[%d]", src, i)
		im, ok := it.(map[string]any)
		if !ok {
			return nil, &Error{Source: isrc, Err: fmt.Errorf("list item is not an object")}
		}
		iu := &unstructured.Unstructured{Object: im}
		if err := check(iu); err != nil {
			return nil, &Error{Source: isrc, Err: err}
		}
		if isList(iu) {
			return nil, &Error{Source: isrc, Err: fmt.Errorf("a list inside a list is not a manifest")}
		}
		out = append(out, Object{Unstructured: iu, Source: isrc})
	}
	return out, nil
}

// check validates what every object needs and refuses Secrets.
func check(u *unstructured.Unstructured) error {
	av, _ := u.Object["apiVersion"].(string)
	kind, _ := u.Object["kind"].(string)
	if av == "" || kind == "" {
		return fmt.Errorf("object has no apiVersion or kind (is this a Kubernetes manifest?)")
	}
	gv, err := schema.ParseGroupVersion(av)
	if err != nil {
		return fmt.Errorf("apiVersion %q: %w", av, err)
	}
	if _, ok := u.Object["metadata"]; ok {
		if _, isMap := u.Object["metadata"].(map[string]any); !isMap {
			return fmt.Errorf("%s %s: metadata must be a mapping", av, kind)
		}
	}
	if gv.Group == "" && kind == "Secret" {
		return fmt.Errorf("v1 Secret %s: %w", u.GetName(), ErrSecret)
	}
	return nil
}

func isList(u *unstructured.Unstructured) bool {
	_, hasItems := u.Object["items"]
	return strings.HasSuffix(u.GetKind(), "List") && (hasItems || u.GetKind() == "List")
}

func depth(v any, d int) int {
	if d > maxDepth {
		return d
	}
	best := d
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			best = max(best, depth(e, d+1))
		}
	case []any:
		for _, e := range x {
			best = max(best, depth(e, d+1))
		}
	}
	return best
}

// stripComments drops full-line YAML comments, so that a document holding
// only comments (a preamble) counts as empty.
func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.SplitSeq(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] == '#' {
			continue
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Encode renders objs as one YAML stream, each document after a "---"
// line, with header lines first as "# " comments (the conversion's
// preamble). Objects must carry their apiVersion and kind. Status and
// server-owned metadata are left out: the output is for applying.
func Encode(objs []any, header []string) ([]byte, error) {
	var b bytes.Buffer
	for _, h := range header {
		for line := range strings.SplitSeq(h, "\n") {
			b.WriteString(strings.TrimRight("# "+line, " ") + "\n")
		}
	}
	for _, obj := range objs {
		raw, err := utiljson.Marshal(obj)
		if err != nil {
			return nil, err
		}
		var m map[string]any
		if err := utiljson.Unmarshal(raw, &m); err != nil {
			return nil, err
		}
		delete(m, "status")
		if spec, ok := m["spec"].(map[string]any); ok && len(spec) == 0 {
			delete(m, "spec") // a Namespace's empty spec
		}
		if md, ok := m["metadata"].(map[string]any); ok {
			for _, k := range []string{"creationTimestamp", "resourceVersion", "uid", "generation", "managedFields"} {
				delete(md, k)
			}
		}
		if m["apiVersion"] == nil || m["kind"] == nil {
			return nil, fmt.Errorf("encode %T: apiVersion and kind must be set", obj)
		}
		y, err := yaml.Marshal(m)
		if err != nil {
			return nil, err
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return b.Bytes(), nil
}
