package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every `kars …` command in the deployment blueprints names a real command
// whose flags parse, so the recipes cannot drift from the CLI. (What runs
// here end to end — the developer inner loop — is in test/e2e.)
func TestBlueprintCommands(t *testing.T) {
	docs, err := filepath.Glob("../../docs/blueprints/*.md")
	if err != nil || len(docs) < 7 {
		t.Fatalf("blueprints: %v %v", docs, err)
	}
	seen := 0
	for _, doc := range docs {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range shellLines(string(data)) {
			args, ok := strings.CutPrefix(line, "kars ")
			if !ok {
				continue
			}
			seen++
			words, err := splitWords(args)
			if err != nil {
				t.Errorf("%s: %q: %v", filepath.Base(doc), line, err)
				continue
			}
			root := NewRoot()
			cmd, rest, err := root.Find(words)
			if err != nil || cmd == root {
				t.Errorf("%s: %q: no such command (%v)", filepath.Base(doc), line, err)
				continue
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Errorf("%s: %q: %v", filepath.Base(doc), line, err)
				continue
			}
			if cmd.HasSubCommands() && cmd.Args == nil && len(cmd.Flags().Args()) > 0 {
				t.Errorf("%s: %q: %q is not a subcommand of %q", filepath.Base(doc), line, cmd.Flags().Arg(0), cmd.CommandPath())
				continue
			}
			if cmd.Args != nil {
				if err := cmd.Args(cmd, cmd.Flags().Args()); err != nil {
					t.Errorf("%s: %q: arguments: %v", filepath.Base(doc), line, err)
				}
			}
		}
	}
	if seen < 30 {
		t.Fatalf("only %d kars commands found in the blueprints", seen)
	}
}

// shellLines returns the lines of the markdown's ```sh blocks, with
// backslash continuations joined.
func shellLines(md string) []string {
	var out []string
	in := false
	cur := ""
	for _, l := range strings.Split(md, "\n") {
		switch {
		case strings.HasPrefix(l, "```sh"):
			in = true
			continue
		case strings.HasPrefix(l, "```"):
			in = false
			continue
		}
		if !in {
			continue
		}
		l = strings.TrimSpace(l)
		if strings.HasSuffix(l, "\\") {
			cur += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		out = append(out, cur+l)
		cur = ""
	}
	return out
}

// splitWords splits a command line the way a POSIX shell would for the
// recipes' simple quoting ('…' and "…", no expansions).
func splitWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case r == '#' && !inWord:
			return words, nil
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, errUnclosedQuote
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

var errUnclosedQuote = errorString("unclosed quote")

type errorString string

func (e errorString) Error() string { return string(e) }
