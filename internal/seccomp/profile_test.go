package seccomp

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
)

var update = flag.Bool("update", false, "rewrite config/seccomp/kars-strict.json from the profile")

const committedPath = "../../config/seccomp/kars-strict.json"

// TestCommittedProfileMatchesRendering keeps the JSON the kubelet loads in
// lockstep with the BPF the local substrate loads: both come from Strict().
func TestCommittedProfileMatchesRendering(t *testing.T) {
	want, err := Strict().OCIJSON()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(filepath.Clean(committedPath), want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(committedPath)
	if err != nil {
		t.Fatalf("read committed profile: %v (run: go test ./internal/seccomp -run Committed -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from seccomp.Strict().OCIJSON(); run: go test ./internal/seccomp -run Committed -update", committedPath)
	}
}

func TestStrictNamesAreRealAndDisjoint(t *testing.T) {
	info, err := arch.GetInfo("x86_64")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]Action{}
	for _, r := range Strict().Rules {
		if len(r.Names) == 0 {
			t.Errorf("rule %q has no names", r.Why)
		}
		for _, n := range r.Names {
			if _, ok := info.SyscallNames[n]; !ok {
				t.Errorf("%q (%s) is not an x86_64 system call", n, r.Why)
			}
			if prev, dup := seen[n]; dup && r.When == nil {
				t.Errorf("%q appears twice (actions %d and %d)", n, prev, r.Action)
			}
			seen[n] = r.Action
		}
	}
}

func TestStrictDecisions(t *testing.T) {
	p := Strict()
	for _, n := range []string{"read", "openat", "clone", "execve", "futex", "socket", "connect", "mmap", "epoll_pwait"} {
		if !p.Allowed(n) {
			t.Errorf("%s must be allowed", n)
		}
	}
	for _, n := range []string{"ptrace", "mount", "umount2", "unshare", "setns", "keyctl", "add_key", "request_key",
		"bpf", "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
		"pivot_root", "chroot", "swapon", "swapoff", "reboot", "open_by_handle_at", "userfaultfd", "iopl", "ioperm",
		"clone3", "io_uring_setup", "process_vm_writev", "not_a_syscall"} {
		if p.Allowed(n) {
			t.Errorf("%s must not be allowed", n)
		}
	}
	c := p.Counts()
	if c.Allowed < 150 || c.ExplicitDeny < 41 {
		t.Errorf("counts %+v: allow list or explicit denials shrank unexpectedly", c)
	}
	t.Logf("kars-strict: %d allowed / %d explicit-deny", c.Allowed, c.ExplicitDeny)
}

func TestOCIRendering(t *testing.T) {
	o := Strict().OCI()
	if o.DefaultAction != "SCMP_ACT_ERRNO" || o.DefaultErrnoRet == nil || *o.DefaultErrnoRet != 1 {
		t.Fatalf("default action %q/%v, want SCMP_ACT_ERRNO/EPERM", o.DefaultAction, o.DefaultErrnoRet)
	}
	var clone, clone3, ptrace, socket bool
	for _, s := range o.Syscalls {
		for _, n := range s.Names {
			switch n {
			case "clone":
				clone = s.Action == "SCMP_ACT_ALLOW" && len(s.Args) == 1 && s.Args[0].Op == "SCMP_CMP_MASKED_EQ" && s.Args[0].Index == 0 &&
					s.Args[0].Value == namespaceCloneFlags && s.Args[0].ValueTwo == 0
			case "clone3":
				clone3 = s.Action == "SCMP_ACT_ERRNO" && s.ErrnoRet != nil && *s.ErrnoRet == 38
			case "socket":
				socket = s.Action == "SCMP_ACT_ALLOW" && len(s.Args) == 1 && s.Args[0].Op == "SCMP_CMP_NE" && s.Args[0].Index == 2 && s.Args[0].Value == 262
			case "ptrace":
				ptrace = s.Action == "SCMP_ACT_ERRNO" && s.ErrnoRet != nil && *s.ErrnoRet == 1
			}
		}
	}
	if !clone || !clone3 || !ptrace || !socket {
		t.Fatalf("rendering: clone conditional=%v clone3 ENOSYS=%v ptrace EPERM=%v socket without MPTCP=%v", clone, clone3, ptrace, socket)
	}
}

func TestBPFAssembles(t *testing.T) {
	raw, err := Strict().Assemble()
	if err != nil {
		t.Fatal(err)
	}
	// The kernel refuses programs longer than BPF_MAXINSNS (4096).
	if len(raw) == 0 || len(raw) > 4096 {
		t.Fatalf("program has %d instructions", len(raw))
	}
}
