package controller

import (
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// pushTo pushes a random image carrying labels to host/repo:tag and returns
// the tag reference.
func pushTo(t *testing.T, host, repo, tag string, labels map[string]string, opts ...remote.Option) string {
	t.Helper()
	img, err := random.Image(128, 1)
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
	ref := host + "/" + repo + ":" + tag
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatal(err)
	}
	return ref
}

// authRegistry is a registry that demands basic auth, for pull secrets.
type authRegistry struct {
	host, user, pass string
}

func startAuthRegistry(t *testing.T, user, pass string) *authRegistry {
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return &authRegistry{host: strings.TrimPrefix(srv.URL, "http://"), user: user, pass: pass}
}

func (a *authRegistry) basic() remote.Option {
	return remote.WithAuth(&authn.Basic{Username: a.user, Password: a.pass})
}

func (a *authRegistry) dockerConfig() []byte {
	auth := base64.StdEncoding.EncodeToString([]byte(a.user + ":" + a.pass))
	return fmt.Appendf(nil, `{"auths":{%q:{"auth":%q}}}`, a.host, auth)
}
