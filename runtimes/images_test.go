package runtimes

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite runtimes/images from versions.json")

// TestImagesCommitted keeps runtimes/images/*/Dockerfile equal to what
// versions.json and the lock files generate.
func TestImagesCommitted(t *testing.T) {
	v := MustLoad()
	for _, id := range v.IDs() {
		want, err := Dockerfile(id)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join("images", ImageName(id), "Dockerfile")
		if *update {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != want {
			t.Errorf("%s is stale: run go test ./runtimes -run Images -update", p)
		}
	}
}

// TestLocksAgreeWithVersions checks every pin of versions.json against the
// runtime's lock file: the two may not drift apart.
func TestLocksAgreeWithVersions(t *testing.T) {
	v := MustLoad()
	for _, id := range v.IDs() {
		rt := v.Runtimes[id]
		fs, err := Files(id)
		if err != nil {
			t.Fatal(err)
		}
		for pkg, ver := range rt.Packages {
			switch rt.Language {
			case Python:
				name := pkg
				if i := strings.IndexByte(name, '['); i >= 0 {
					name = name[:i]
				}
				if !strings.Contains(strings.ToLower(string(fs["requirements.txt"])), "\n"+strings.ToLower(name)+"=="+ver+"\n") {
					t.Errorf("%s: requirements.txt does not pin %s==%s (run runtimes/lock.sh)", id, name, ver)
				}
			case Node:
				if !strings.Contains(string(fs["package.json"]), `"`+pkg+`": "`+ver+`"`) {
					t.Errorf("%s: package.json does not pin %s %s", id, pkg, ver)
				}
				if !strings.Contains(string(fs["package-lock.json"]), `"node_modules/`+pkg+`": {`+"\n      \"version\": \""+ver+`"`) {
					t.Errorf("%s: package-lock.json does not lock %s %s", id, pkg, ver)
				}
			}
		}
	}
}

func TestCatalogImageNames(t *testing.T) {
	for id, want := range map[string]string{"openclaw": "kars-runtime-openclaw", "openai-agents": "kars-runtime-openai-agents-python3.12",
		"langgraph-typescript": "kars-runtime-langgraph-typescript"} {
		if got := ImageName(id); got != want {
			t.Errorf("ImageName(%s) = %s, want %s", id, got, want)
		}
	}
}
