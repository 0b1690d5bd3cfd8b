package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestVersionPrintsBuild(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main([]string{"version"}, &out, &errOut); code != 0 {
		t.Fatalf("kars version exited %d: %s", code, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "kars v") {
		t.Fatalf("kars version printed %q, want it to start with \"kars v\"", out.String())
	}

	out.Reset()
	if code := Main([]string{"version", "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("kars version --json exited %d: %s", code, errOut.String())
	}
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("kars version --json is not JSON: %v\n%s", err, out.String())
	}
	if got["version"] == "" || got["goVersion"] == "" {
		t.Fatalf("kars version --json lacks fields: %v", got)
	}
}

func TestUnknownCommandFails(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main([]string{"no-such-command"}, &out, &errOut); code == 0 {
		t.Fatal("an unknown command exited 0")
	}
	if !strings.Contains(errOut.String(), "no-such-command") {
		t.Fatalf("error does not name the command: %q", errOut.String())
	}
}
