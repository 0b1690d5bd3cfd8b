package local

import "testing"

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/plain/path`:           "/plain/path",
		`/with\040space`:        "/with space",
		`/tab\011nl\012bs\134x`: "/tab\tnl\nbs\\x",
		`/not\09octal`:          `/not\09octal`,
		`/short\04`:             `/short\04`,
	} {
		if got := UnescapeMountPath(in); got != want {
			t.Errorf("UnescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}
