package local

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestImageRoot runs the agent from an unpacked image: the image's tree is
// its root (the host's is not there), read-only, with agent code bound at
// AgentCodeMount, the workspace writable and the router reachable as
// before. Controls show the host paths it cannot see exist on the host.
func TestImageRoot(t *testing.T) {
	requireRoot(t)
	s := baseSpec(t, "img", "imageprobe")
	img := imageRootFor(t, testBinary(t))
	if err := os.WriteFile(filepath.Join(img, "etc", "image-marker"), []byte("from the image"), 0o644); err != nil {
		t.Fatal(err)
	}
	code := t.TempDir()
	os.Chmod(code, 0o755)
	if err := os.WriteFile(filepath.Join(code, "agent.py"), []byte("print('hi')"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A host file the agent must not see; it is readable on the host.
	hostOnly := filepath.Join("/var/tmp", "kars-host-only-"+s.ID)
	if err := os.WriteFile(hostOnly, []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(hostOnly) })
	s.AgentRoot, s.AgentCode = img, code
	s.Agent.Path = "/bin/agent"
	s.Agent.Env = append(s.Agent.Env, "PROBE_HOST_ONLY="+hostOnly)
	p := startPod(t, s)
	res := probeResult(t, p)
	t.Logf("probe: %v", res)
	expect(t, res, map[string]string{
		"router":                  "ok",
		"read-/etc/image-marker":  "ok",
		"read-" + AgentCodeMount:  "ok",
		"read-host-only":          "no such file",
		"read-/etc/hostname":      "no such file",
		"write-/sandbox/x":        "ok",
		"write-/etc/x":            "read-only file system",
		"write-" + AgentCodeMount: "read-only file system|permission denied",
		"write-/x":                "read-only file system",
		"exe-is-image":            "ok",
	})
	if _, err := os.Stat("/etc/hostname"); err != nil {
		t.Logf("control: the host has no /etc/hostname (%v); the check above proves less", err)
	}
}

// imageProbe is the agent of TestImageRoot.
func imageProbe() {
	res := map[string]string{}
	check := func(name string, err error) {
		if err == nil {
			res[name] = "ok"
		} else {
			res[name] = err.Error()
		}
	}
	check("router", func() error {
		got, err := routerSays("PING")
		if err == nil && got != "PONG" {
			err = fmt.Errorf("router said %q", got)
		}
		return err
	}())
	read := func(p string) error { _, err := os.ReadFile(p); return err }
	write := func(p string) error { return os.WriteFile(p, []byte("x"), 0o644) }
	check("read-/etc/image-marker", read("/etc/image-marker"))
	check("read-"+AgentCodeMount, read(AgentCodeMount+"/agent.py"))
	check("read-host-only", read(os.Getenv("PROBE_HOST_ONLY")))
	check("read-/etc/hostname", read("/etc/hostname"))
	check("write-/sandbox/x", write("/sandbox/x"))
	check("write-/etc/x", write("/etc/x"))
	check("write-"+AgentCodeMount, write(AgentCodeMount+"/x"))
	check("write-/x", write("/x"))
	check("exe-is-image", func() error {
		exe, err := os.Readlink("/proc/self/exe")
		if err == nil && exe != "/bin/agent" {
			err = fmt.Errorf("running %s", exe)
		}
		return err
	}())
	out, _ := json.Marshal(res)
	fmt.Printf("PROBE %s\n", out)
}

// imageRootFor builds a minimal image tree holding bin at /bin/agent and
// the shared objects it loads, at their host paths.
func imageRootFor(t *testing.T, bin string) string {
	t.Helper()
	root, err := os.MkdirTemp("/var/tmp", "kars-image-root-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	for _, d := range []string{"bin", "etc"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, bin, filepath.Join(root, "bin", "agent"))
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var files []string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, _ := io.ReadAll(p.Open())
			files = append(files, string(b[:len(b)-1]))
		}
	}
	libs, _ := f.ImportedLibraries()
	for _, l := range libs {
		for _, dir := range []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"} {
			if _, err := os.Stat(filepath.Join(dir, l)); err == nil {
				files = append(files, filepath.Join(dir, l))
				break
			}
		}
	}
	for _, src := range files {
		real, err := filepath.EvalSymlinks(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, src)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		copyFile(t, real, dst)
	}
	return root
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err == nil {
		err = os.WriteFile(dst, data, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
}
