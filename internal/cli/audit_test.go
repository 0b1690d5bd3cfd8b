package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kars-io/kars/internal/audit"
)

func writeAuditLog(t *testing.T) (dir string, pub ed25519.PublicKey) {
	t.Helper()
	dir = t.TempDir()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := audit.Open(audit.Options{Dir: dir, Sandbox: "ns/sb", SigningKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	for _, action := range []string{"tool:search", "egress:api.github.com:443", "inference:chat:gpt-4.1"} {
		if _, err := w.Append(context.Background(), audit.Record{Sandbox: "ns/sb", Agent: "a", Action: action, Decision: "allow"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, pub
}

func runKars(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = Main(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestAuditVerifyCommand(t *testing.T) {
	dir, pub := writeAuditLog(t)
	code, out, errOut := runKars("audit", "verify", dir, "--key", audit.KeyString(pub))
	if code != 0 || !strings.HasPrefix(out, "OK ") || !strings.Contains(out, "4 entries (1..4)") {
		t.Fatalf("verify of a good log: code %d\n%s%s", code, out, errOut)
	}

	// A PEM key file works as well.
	der, _ := x509.MarshalPKIXPublicKey(pub)
	keyFile := filepath.Join(t.TempDir(), "audit.pub")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	if code, out, errOut := runKars("audit", "verify", dir, "--key", keyFile); code != 0 {
		t.Fatalf("verify with a PEM key file: code %d\n%s%s", code, out, errOut)
	}

	// Someone else's key: the log's own key is not trusted.
	other, _, _ := ed25519.GenerateKey(nil)
	code, out, _ = runKars("audit", "verify", dir, "--key", audit.KeyString(other))
	if code == 0 || !strings.Contains(out, "untrusted-key") {
		t.Fatalf("verify with an unrelated pinned key passed: %s", out)
	}

	// Modify one entry.
	names, _ := filepath.Glob(filepath.Join(dir, "audit-*.jsonl"))
	data, _ := os.ReadFile(names[0])
	os.WriteFile(names[0], bytes.Replace(data, []byte(`"tool:search"`), []byte(`"tool:seArch"`), 1), 0o640)
	code, out, errOut = runKars("audit", "verify", dir)
	if code == 0 || !strings.Contains(out, "modified: entry 2 at "+filepath.Base(names[0])+":2") || !strings.Contains(errOut, "failed verification") {
		t.Fatalf("tampered log: code %d\n%s%s", code, out, errOut)
	}
	code, out, _ = runKars("audit", "verify", "--json", dir)
	var rep struct {
		OK      bool `json:"ok"`
		Problem struct {
			Kind string `json:"kind"`
			Seq  uint64 `json:"seq"`
			Line int    `json:"line"`
		} `json:"problem"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code == 0 || rep.OK || rep.Problem.Kind != "modified" || rep.Problem.Seq != 2 || rep.Problem.Line != 2 {
		t.Fatalf("--json report: code %d err %v\n%s", code, err, out)
	}
}

func TestAuditVerifyRejectsBadInput(t *testing.T) {
	if code, _, errOut := runKars("audit", "verify", filepath.Join(t.TempDir(), "missing")); code == 0 || !strings.Contains(errOut, "not a directory") {
		t.Fatalf("missing directory: %d %s", code, errOut)
	}
	dir, _ := writeAuditLog(t)
	if code, _, errOut := runKars("audit", "verify", dir, "--key", "not-a-key"); code == 0 || !strings.Contains(errOut, "--key") {
		t.Fatalf("bad key: %d %s", code, errOut)
	}
}

// --anchor catches a log whose tail was cut together with its checkpoints,
// which verifies on its own.
func TestAuditVerifyAnchor(t *testing.T) {
	dir, pub := writeAuditLog(t)
	rep, err := audit.Verify(dir, audit.VerifyOptions{})
	if err != nil || !rep.OK() {
		t.Fatal(err, rep)
	}
	anchor := "4:" + rep.HeadHash
	if code, out, errOut := runKars("audit", "verify", dir, "--key", audit.KeyString(pub), "--anchor", anchor); code != 0 {
		t.Fatalf("anchored verify of a good log: %d\n%s%s", code, out, errOut)
	}
	// Cut entry 4 and the checkpoint naming it.
	names, _ := filepath.Glob(filepath.Join(dir, "audit-*.jsonl"))
	data, _ := os.ReadFile(names[0])
	lines := bytes.SplitAfter(data, []byte("\n"))
	os.WriteFile(names[0], bytes.Join(lines[:3], nil), 0o640)
	os.WriteFile(filepath.Join(dir, "checkpoints.jsonl"), nil, 0o640)
	if code, out, _ := runKars("audit", "verify", dir, "--key", audit.KeyString(pub)); code != 0 {
		t.Fatalf("without the anchor the cut log should verify (that is the gap): %d\n%s", code, out)
	}
	code, out, _ := runKars("audit", "verify", dir, "--key", audit.KeyString(pub), "--anchor", anchor)
	if code == 0 || !strings.Contains(out, "truncated") {
		t.Fatalf("anchored verify of a cut log: %d\n%s", code, out)
	}
	for _, bad := range []string{"4", "x:" + rep.HeadHash, "0:" + rep.HeadHash, "4:abc"} {
		if code, _, errOut := runKars("audit", "verify", dir, "--anchor", bad); code == 0 || !strings.Contains(errOut, "--anchor") {
			t.Fatalf("bad anchor %q: %d %s", bad, code, errOut)
		}
	}
}
