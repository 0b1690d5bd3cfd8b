// Package agent is kars-agent, the built-in reference agent: the worked
// example of the kars runtime contract v1 (docs/runtime-contract.md).
//
// It reads its configuration from the environment the controller sets,
// talks to a model only through the router's OpenAI-compatible API, asks the
// router for a policy decision before every tool call, keeps each
// conversation in its workspace, and serves a chat endpoint on loopback.
// It holds no credential: the API key it sends is a placeholder the router
// discards.
package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ContractVersion is the runtime contract this agent implements.
const ContractVersion = "v1"

// The contract's environment variables (docs/runtime-contract.md).
const (
	EnvContractVersion = "KARS_CONTRACT_VERSION"
	EnvSandbox         = "KARS_SANDBOX_NAME"
	EnvNamespace       = "KARS_SANDBOX_NAMESPACE"
	EnvAgentID         = "KARS_AGENT_ID"
	EnvRouterURL       = "KARS_ROUTER_URL"
	EnvModel           = "KARS_MODEL"
	EnvWorkspace       = "KARS_WORKSPACE"
	EnvListen          = "KARS_AGENT_LISTEN"
	EnvInstructions    = "KARS_INSTRUCTIONS"
	EnvTools           = "KARS_TOOLS"
)

// Config is the agent's configuration.
type Config struct {
	Sandbox, Namespace, AgentID string
	// RouterURL is the router's base URL, http://127.0.0.1:8443.
	RouterURL string
	// Model is the model name sent in requests; the router maps it to the
	// deployment its policy allows.
	Model string
	// Workspace is the writable directory (/sandbox in a sandbox).
	Workspace string
	// Listen is the chat endpoint address, 127.0.0.1:18789.
	Listen string
	// Instructions are the system prompt.
	Instructions string
	// Tools enabled by name; empty enables every built-in tool.
	Tools []string
}

// ConfigFromEnv reads the contract's variables. Missing optional values get
// the contract's defaults; a contract version other than v1 is an error.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	if v := getenv(EnvContractVersion); v != "" && v != ContractVersion {
		return Config{}, fmt.Errorf("%s=%q: this agent implements contract %s", EnvContractVersion, v, ContractVersion)
	}
	c := Config{
		Sandbox:      getenv(EnvSandbox),
		Namespace:    getenv(EnvNamespace),
		AgentID:      getenv(EnvAgentID),
		RouterURL:    or(getenv(EnvRouterURL), "http://127.0.0.1:8443"),
		Model:        or(getenv(EnvModel), "default"),
		Workspace:    or(getenv(EnvWorkspace), "/sandbox"),
		Listen:       or(getenv(EnvListen), "127.0.0.1:18789"),
		Instructions: or(getenv(EnvInstructions), "You are a helpful assistant running in a governed kars sandbox."),
	}
	for _, t := range strings.Split(getenv(EnvTools), ",") {
		if t = strings.TrimSpace(t); t != "" {
			c.Tools = append(c.Tools, t)
		}
	}
	if c.AgentID == "" && c.Sandbox != "" {
		c.AgentID = c.Namespace + "/" + c.Sandbox
	}
	if !filepath.IsAbs(c.Workspace) {
		return Config{}, fmt.Errorf("%s=%q must be an absolute path", EnvWorkspace, c.Workspace)
	}
	if fi, err := os.Stat(c.Workspace); err != nil || !fi.IsDir() {
		return Config{}, errors.Join(fmt.Errorf("workspace %s is not a directory", c.Workspace), err)
	}
	return c, nil
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
