package devenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/egress/artifact"
)

// EgressKeyFile is where kars keeps the allowlist signing key by default
// (PKCS#8 PEM, mode 0600); its public key is beside it with ".pub".
func EgressKeyFile() string { return filepath.Join(Home(), "egress-signing.key") }

// LoadOrCreateEgressKey reads the signing key at path; when path is empty
// it uses EgressKeyFile, creating the key (and its .pub) the first time.
func LoadOrCreateEgressKey(path string) (*ecdsa.PrivateKey, error) {
	explicit := path != ""
	if !explicit {
		path = EgressKeyFile()
	}
	raw, err := os.ReadFile(path)
	if err == nil {
		k, err := artifact.ParsePrivateKey(raw)
		if err != nil {
			return nil, fmt.Errorf("signing key %s: %w", path, err)
		}
		return k, nil
	}
	if explicit || !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	priv, _ := artifact.MarshalPrivateKey(k)
	pub, _ := artifact.MarshalPublicKey(&k.PublicKey)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, priv, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path+".pub", pub, 0o644); err != nil {
		return nil, err
	}
	return k, nil
}

// devSigners is the dev controller's SignerPolicy: it trusts kars's own
// signing key (created on first use, the key `kars egress --enforce`
// signs with) and reaches the dev registry over plain HTTP.
func devSigners() (*controller.SignerPolicy, error) {
	k, err := LoadOrCreateEgressKey("")
	if err != nil {
		return nil, err
	}
	return &controller.SignerPolicy{Keys: []*ecdsa.PublicKey{&k.PublicKey}, PlainHTTP: []string{RegistryAddr}}, nil
}
