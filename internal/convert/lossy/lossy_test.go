package lossy

import (
	"slices"
	"testing"
)

func doc() *Doc {
	return New("test", map[string]any{
		"kind": "X",
		"spec": map[string]any{
			"keep":  "a",
			"drop":  "b",
			"empty": map[string]any{},
			"list":  []any{map[string]any{"name": "one", "extra": 1}, map[string]any{"name": "two"}},
			"whole": map[string]any{"deep": map[string]any{"x": true}},
			"annotations": map[string]any{
				"example.com/a.b": "c",
			},
		},
	})
}

func pathsOf(fs []Field) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Path+"="+f.Reason)
	}
	return out
}

func TestLossyNamesEverythingNotCarried(t *testing.T) {
	d := doc()
	d.Carry("kind")
	if s, err := d.String("spec.keep"); err != nil || s != "a" {
		t.Fatalf("String: %q %v", s, err)
	}
	d.Drop("spec.drop", "gone")
	d.Drop("spec.absent", "never there")
	if v, _ := d.Get("spec.list[0].name"); v != "one" {
		t.Fatalf("list element: %v", v)
	}
	d.Carry(`spec.annotations["example.com/a.b"]`)
	got := pathsOf(d.Lossy())
	want := []string{
		"spec.drop=gone",
		"spec.list[0].extra=" + NoAnalog,
		"spec.list[1]=" + NoAnalog, // nothing of it was read: named as a whole
		"spec.whole=" + NoAnalog,
	}
	if !slices.Equal(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestDropAfterReadWins(t *testing.T) {
	d := doc()
	_, _ = d.String("spec.keep")
	d.Drop("spec.keep", "read, then found unusable")
	found := false
	for _, f := range d.Lossy() {
		found = found || (f.Path == "spec.keep" && f.Reason == "read, then found unusable")
	}
	if !found {
		t.Errorf("a drop after a read was not reported: %v", d.Lossy())
	}
}

func TestTypeErrors(t *testing.T) {
	d := New("o", map[string]any{"n": int64(3), "s": "x", "l": []any{"a", 2}, "f": 1.5})
	if _, err := d.String("n"); err == nil {
		t.Error("a number read as a string")
	}
	if _, err := d.Strings("l"); err == nil {
		t.Error("a mixed list read as strings")
	}
	if v, set, err := d.Int("n"); err != nil || !set || v != 3 {
		t.Errorf("Int: %d %v %v", v, set, err)
	}
	if _, _, err := d.Int("f"); err == nil {
		t.Error("1.5 read as an integer")
	}
	if _, _, err := d.Bool("s"); err == nil {
		t.Error("a string read as a bool")
	}
	if _, ok := d.Get("l[7]"); ok {
		t.Error("an index past the end was found")
	}
}
