// Package aks embeds the Bicep templates `kars up --aks` deploys (main.bicep:
// AKS with OIDC issuer and workload identity, ACR, Key Vault, Azure AI Foundry
// with a project and model deployment, the router's federated identity and,
// for --expose-registry, an Application Gateway WAF_v2 with AGIC).
package aks

import (
	"embed"
	"io/fs"
	"os"
	"path/filepath"
)

//go:embed *.bicep
var files embed.FS

// Main is the entry template's file name.
const Main = "main.bicep"

// Files returns the templates.
func Files() fs.FS { return files }

// WriteTo writes the templates into dir (created if needed) for `az
// deployment group create --template-file`, and returns the entry file.
func WriteTo(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	ents, err := fs.ReadDir(files, ".")
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		b, err := fs.ReadFile(files, e.Name())
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			return "", err
		}
	}
	return filepath.Join(dir, Main), nil
}
