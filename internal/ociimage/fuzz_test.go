package ociimage

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// Pull secrets are user input: parsing any document must not panic, and a
// keychain built from whatever parsed must answer every registry.
func FuzzDockerConfig(f *testing.F) {
	f.Add([]byte(`{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"}}}`))
	f.Add([]byte(`{"myacr.azurecr.io":{"username":"u","password":"p"}}`))
	f.Add([]byte(`{"auths":{"r:5000/path":{"identitytoken":"t"}}}`))
	f.Add([]byte(`{"auths":{"x":{"auth":"!!"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		kc := &Keychain{}
		_ = kc.ParseDockerConfigJSON(data)
		_ = kc.ParseDockerCfg(data)
		for _, reg := range []string{"index.docker.io", "myacr.azurecr.io", "r:5000", "127.0.0.1:5000"} {
			r, err := name.NewRegistry(reg)
			if err != nil {
				t.Fatal(err)
			}
			if a, err := kc.Resolve(r); err != nil || a == nil {
				t.Fatalf("Resolve(%s) = %v, %v", reg, a, err)
			}
		}
	})
}
