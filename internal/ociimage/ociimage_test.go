package ociimage

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// testRegistry is a real OCI distribution registry on loopback. It counts
// the requests it serves and, when user is set, demands basic auth.
type testRegistry struct {
	srv      *httptest.Server
	host     string
	requests atomic.Int64
	user     string
	pass     string
}

func startRegistry(t *testing.T, user, pass string) *testRegistry {
	t.Helper()
	r := &testRegistry{user: user, pass: pass}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		if r.user != "" {
			u, p, ok := req.BasicAuth()
			if !ok || u != r.user || p != r.pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

// push uploads a random image with the given labels under repo:tag and
// returns its digest.
func (r *testRegistry) push(t *testing.T, repo, tag string, labels map[string]string) string {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config.Labels = labels
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.host + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{}
	if r.user != "" {
		kc := &Keychain{}
		kc.entries = append(kc.entries, keyEntry{host: r.host})
		kc.entries[0].cfg.Username, kc.entries[0].cfg.Password = r.user, r.pass
		opts = append(opts, remote.WithAuthFromKeychain(kc))
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestContractLabelPresentAbsentDifferent(t *testing.T) {
	reg := startRegistry(t, "", "")
	good := reg.push(t, "agents/good", "v1", map[string]string{ContractLabel: "v1", "org.opencontainers.image.title": "good"})
	reg.push(t, "agents/bare", "latest", nil)
	reg.push(t, "agents/future", "latest", map[string]string{ContractLabel: "v2"})
	var c Checker
	ctx := context.Background()

	ref := reg.host + "/agents/good:v1"
	img, err := c.Inspect(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != good || img.Pinned != reg.host+"/agents/good@"+good {
		t.Errorf("resolved %s (%s), pushed %s", img.Pinned, img.Digest, good)
	}
	if err := CheckContract(ref, img, "v1"); err != nil {
		t.Errorf("labelled image refused: %v", err)
	}

	for repo, got := range map[string]string{"agents/bare:latest": "", "agents/future:latest": "v2"} {
		ref := reg.host + "/" + repo
		img, err := c.Inspect(ctx, ref, nil)
		if err != nil {
			t.Fatal(err)
		}
		var ce *ContractError
		if err := CheckContract(ref, img, "v1"); !errors.As(err, &ce) || ce.Got != got {
			t.Errorf("%s: got %v, want a ContractError with label %q", repo, err, got)
		}
	}
}

// A verified digest is never fetched again; a tag is re-resolved with one
// HEAD only after its TTL, and a moved tag is noticed.
func TestCacheByDigest(t *testing.T) {
	reg := startRegistry(t, "", "")
	first := reg.push(t, "agents/a", "latest", map[string]string{ContractLabel: "v1"})
	now := time.Unix(1_700_000_000, 0)
	c := Checker{TagTTL: time.Minute, Now: func() time.Time { return now }}
	ctx := context.Background()
	ref := reg.host + "/agents/a:latest"

	if _, err := c.Inspect(ctx, ref, nil); err != nil {
		t.Fatal(err)
	}
	before := reg.requests.Load()
	for range 5 {
		if _, err := c.Inspect(ctx, ref, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Inspect(ctx, reg.host+"/agents/a@"+first, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := reg.requests.Load() - before; n != 0 {
		t.Fatalf("cached image cost %d registry requests", n)
	}

	second := reg.push(t, "agents/a", "latest", map[string]string{})
	if img, _ := c.Inspect(ctx, ref, nil); img.Digest != first {
		t.Fatal("tag re-resolved before its TTL")
	}
	now = now.Add(2 * time.Minute)
	img, err := c.Inspect(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != second || CheckContract(ref, img, "v1") == nil {
		t.Fatalf("moved tag: digest %s (want %s), contract error %v", img.Digest, second, CheckContract(ref, img, "v1"))
	}
}

func TestUnreachableRegistry(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var c Checker
	start := time.Now()
	_, err = c.Inspect(context.Background(), addr+"/agents/x:latest", nil)
	var ue *UnreachableError
	if !errors.As(err, &ue) || ue.Status != 0 {
		t.Fatalf("got %v, want an UnreachableError for a closed port", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a refused connection took %v: the checker retries inside the call", d)
	}

	reg := startRegistry(t, "", "")
	_, err = c.Inspect(context.Background(), reg.host+"/agents/missing:latest", nil)
	if !errors.As(err, &ue) || ue.Status != http.StatusNotFound {
		t.Fatalf("got %v, want 404 UnreachableError", err)
	}
}

// Pull secrets authenticate the label read, in both Secret formats.
func TestPullSecretCredentials(t *testing.T) {
	reg := startRegistry(t, "robot", "s3cret")
	reg.push(t, "private/agent", "v1", map[string]string{ContractLabel: "v1"})
	ref := reg.host + "/private/agent:v1"
	var c Checker

	_, err := c.Inspect(context.Background(), ref, nil)
	var ue *UnreachableError
	if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized {
		t.Fatalf("anonymous read: got %v, want 401", err)
	}
	auth := base64.StdEncoding.EncodeToString([]byte("robot:s3cret"))
	for name, parse := range map[string]func(*Keychain) error{
		".dockerconfigjson": func(k *Keychain) error {
			return k.ParseDockerConfigJSON(fmt.Appendf(nil, `{"auths":{"http://%s":{"auth":%q}}}`, reg.host, auth))
		},
		".dockercfg": func(k *Keychain) error {
			return k.ParseDockerCfg(fmt.Appendf(nil, `{%q:{"username":"robot","password":"s3cret"}}`, reg.host))
		},
	} {
		kc := &Keychain{}
		if err := parse(kc); err != nil {
			t.Fatal(name, err)
		}
		img, err := c.Inspect(context.Background(), ref, kc)
		if err != nil || CheckContract(ref, img, "v1") != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c = Checker{} // drop the cache so the next format is exercised
	}
	if err := (&Keychain{}).ParseDockerConfigJSON([]byte(`{"auths":{"x":{"auth":"!!"}}}`)); err == nil {
		t.Error("malformed auth accepted")
	}
}

func TestRegistryHost(t *testing.T) {
	for in, want := range map[string]string{
		"https://index.docker.io/v1/": "index.docker.io",
		"docker.io":                   "index.docker.io",
		"myacr.azurecr.io":            "myacr.azurecr.io",
		"http://127.0.0.1:5000/v2/":   "127.0.0.1:5000",
	} {
		if got := registryHost(in); got != want {
			t.Errorf("registryHost(%q) = %q, want %q", in, got, want)
		}
	}
}
