package ociimage

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// dockerConfig is the layout of a kubernetes.io/dockerconfigjson Secret's
// .dockerconfigjson key (and, as its auths map alone, of the legacy
// kubernetes.io/dockercfg .dockercfg key).
type dockerConfig struct {
	Auths map[string]dockerAuth `json:"auths"`
}

type dockerAuth struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

// Keychain resolves registry credentials from image pull secrets, the way
// the kubelet does: the first secret with an entry for the registry wins.
type Keychain struct {
	entries []keyEntry
}

type keyEntry struct {
	host string
	cfg  authn.AuthConfig
}

// ParseDockerConfigJSON adds the entries of a .dockerconfigjson document.
func (k *Keychain) ParseDockerConfigJSON(data []byte) error {
	var dc dockerConfig
	if err := json.Unmarshal(data, &dc); err != nil {
		return fmt.Errorf("parse .dockerconfigjson: %w", err)
	}
	return k.add(dc.Auths)
}

// ParseDockerCfg adds the entries of a legacy .dockercfg document.
func (k *Keychain) ParseDockerCfg(data []byte) error {
	var auths map[string]dockerAuth
	if err := json.Unmarshal(data, &auths); err != nil {
		return fmt.Errorf("parse .dockercfg: %w", err)
	}
	return k.add(auths)
}

func (k *Keychain) add(auths map[string]dockerAuth) error {
	for key, a := range auths {
		cfg := authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return fmt.Errorf("registry %s: auth is not base64", key)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return fmt.Errorf("registry %s: auth is not user:password", key)
			}
			cfg.Username, cfg.Password = user, pass
		}
		k.entries = append(k.entries, keyEntry{host: registryHost(key), cfg: cfg})
	}
	return nil
}

// registryHost reduces a docker config key ("https://index.docker.io/v1/",
// "myacr.azurecr.io", "registry:5000/path") to the registry host.
func registryHost(key string) string {
	key = strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	host, _, _ := strings.Cut(key, "/")
	if host == "docker.io" || host == "registry-1.docker.io" {
		return "index.docker.io"
	}
	return host
}

// Resolve implements authn.Keychain.
func (k *Keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	host := registryHost(r.RegistryStr())
	for _, e := range k.entries {
		if e.host == host {
			return authn.FromConfig(e.cfg), nil
		}
	}
	return authn.Anonymous, nil
}
