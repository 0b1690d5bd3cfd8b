package routerconfig

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestUnderRoot(t *testing.T) {
	cases := []struct{ root, p, want string }{
		{"/srv/pod", "/var/lib/kars/audit", "/srv/pod/var/lib/kars/audit"},
		{"/srv/pod", "/../../etc/shadow", "/srv/pod/etc/shadow"},
		{"/srv/pod", "/var/../../etc/shadow", "/srv/pod/etc/shadow"},
		{"/srv/pod", "relative/key", "relative/key"},
		{"/srv/pod", "", ""},
		{"", "/var/lib/kars/audit", "/var/lib/kars/audit"},
	}
	for _, tc := range cases {
		if got := UnderRoot(tc.root, tc.p); got != tc.want {
			t.Errorf("UnderRoot(%q, %q) = %q, want %q", tc.root, tc.p, got, tc.want)
		}
	}
}

// filePaths collects every string field named *File or *Dir in v, by field
// path: a path field added to Config later is covered without editing the
// test.
func filePaths(v reflect.Value, at string, out map[string]string) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			filePaths(v.Elem(), at, out)
		}
	case reflect.Slice:
		for i := range v.Len() {
			filePaths(v.Index(i), at+"["+strconv.Itoa(i)+"]", out)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			if f.Type.Kind() == reflect.String && (strings.HasSuffix(f.Name, "File") || strings.HasSuffix(f.Name, "Dir")) {
				out[at+"."+f.Name] = v.Field(i).String()
				continue
			}
			filePaths(v.Field(i), at+"."+f.Name, out)
		}
	}
}

// rootedConfig sets every file path a config can carry.
func rootedConfig() *Config {
	c := validConfig()
	c.Models.Primary.Auth.FederatedTokenFile = "/var/run/secrets/azure/tokens/azure-identity-token"
	c.Models.Fallbacks = append(c.Models.Fallbacks, Target{Provider: ProviderOpenAI, Model: "gpt-4o",
		Auth: &Auth{Mode: AuthAPIKey, KeyFile: "/var/run/secrets/kars/providers/openai/key"}})
	c.Audit.CheckpointKeyFile = "/var/run/secrets/kars/audit-key/ed25519.pem"
	c.Admin.TLSCertFile, c.Admin.TLSKeyFile = "/var/run/secrets/kars/admin/tls.crt", "/var/run/secrets/kars/admin/tls.key"
	return c
}

func TestSnapshotUnderRootsEveryPath(t *testing.T) {
	c := rootedConfig()
	b, _ := Marshal(c)
	s, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]string{}
	filePaths(reflect.ValueOf(s.Config), "config", before)
	rooted := s.Under("/home/dev/.kars/pods/demo/router")
	after := map[string]string{}
	filePaths(reflect.ValueOf(rooted.Config), "config", after)
	for field, p := range before {
		want := p
		if p != "" {
			want = "/home/dev/.kars/pods/demo/router" + p
		}
		if after[field] != want {
			t.Errorf("%s: %q under the root is %q, want %q", field, p, after[field], want)
		}
	}
	if len(before) < 8 {
		t.Fatalf("found only %d path fields: %v", len(before), before)
	}
	// The snapshot as parsed is untouched, and the digest stays the
	// compiled config's.
	again := map[string]string{}
	filePaths(reflect.ValueOf(s.Config), "config", again)
	if !reflect.DeepEqual(before, again) {
		t.Fatalf("Under modified its receiver: %v", again)
	}
	if want, _ := Digest(c); rooted.Digest != want || s.Digest != want {
		t.Fatalf("digest %s (rooted) %s (parsed), want %s", rooted.Digest, s.Digest, want)
	}
	if s.Under("") != s {
		t.Fatal("an empty root must leave the snapshot as it is")
	}
}

// TestWatcherUnderRoot lays the config out as the local substrate does —
// the rendered mount path under the router's directory — and loads it by
// its rendered path.
func TestWatcherUnderRoot(t *testing.T) {
	root := t.TempDir()
	c := rootedConfig()
	b, _ := Marshal(c)
	path := filepath.Join(root, "etc/kars/router", FileName)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher("/etc/kars/router/"+FileName, root)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Digest(c)
	cur := w.Current()
	if cur.Digest != want || cur.Config.Audit.Dir != filepath.Join(root, "var/lib/kars/audit") {
		t.Fatalf("digest %s, audit dir %s", cur.Digest, cur.Config.Audit.Dir)
	}
	// A reload is resolved under the root as well.
	c.Budget.Daily = 5
	b, _ = Marshal(c)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if changed, err := w.Reload(); err != nil || !changed {
		t.Fatalf("reload: %v %v", changed, err)
	}
	want, _ = Digest(c)
	if cur := w.Current(); cur.Digest != want || cur.Config.StateDir != filepath.Join(root, "var/lib/kars/state") {
		t.Fatalf("after reload: digest %s, state dir %s", cur.Digest, cur.Config.StateDir)
	}
	if _, err := NewWatcher("/etc/kars/router/"+FileName, ""); err == nil {
		t.Fatal("without the root the rendered path must not resolve on this host")
	}
}
