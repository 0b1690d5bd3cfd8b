package router

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// loadSigningKey reads the audit checkpoint key (Ed25519, PKCS#8 PEM) at
// path, creating it the first time. The key is the router's own: generated
// here, on the router's state volume (mode 0600 in a 0700 folder), so no
// Secret a tenant might read ever holds it. Its public half is announced in
// the log's audit:open entries and on the admin API, where the controller
// pins it.
func loadSigningKey(path string) (ed25519.PrivateKey, error) {
	return loadKeyFile(path, "audit checkpoint key")
}

// loadKeyFile reads the Ed25519 key at path, creating it the first time;
// what names the key in errors.
func loadKeyFile(path, what string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createSigningKey(path, what)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s %s: not PEM", what, path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s %s: not an Ed25519 key", what, path)
	}
	return ek, nil
}

// createSigningKey generates a key and writes it with O_EXCL, so that two
// routers racing on one volume cannot end up signing with different keys:
// the loser reads the winner's.
func createSigningKey(path, what string) (ed25519.PrivateKey, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("%s folder: %w", what, err)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	_, err = f.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// link(2) fails if path exists: the first key written wins.
	if err := os.Link(tmp, path); err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrExist) {
			return loadKeyFile(path, what)
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	os.Remove(tmp)
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return key, nil
}
