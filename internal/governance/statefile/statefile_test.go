package statefile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if data, err := Read(path); err != nil || data != nil {
		t.Fatalf("Read of a missing file = %q, %v; want nil, nil", data, err)
	}
	for _, v := range []string{"one", "two, longer", "3"} {
		if err := Write(path, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		if data, err := Read(path); err != nil || string(data) != v {
			t.Fatalf("Read = %q, %v; want %q", data, err, v)
		}
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left behind: %v", ents)
	}
}

func TestWriteFailsWithoutDirectory(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "missing", "state.json"), []byte("x"), 0o600); err == nil {
		t.Fatal("Write into a missing directory succeeded")
	}
}
