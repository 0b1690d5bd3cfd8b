package render

import (
	"fmt"
	"strings"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// DefaultRegistry is where kars images are published unless the controller
// is told otherwise (--image-registry).
const DefaultRegistry = "ghcr.io/kars-io"

// DefaultGitSyncImage fetches git agent code in an init container.
const DefaultGitSyncImage = "registry.k8s.io/git-sync/git-sync:v4.4.2"

// Catalog locates the images kars runs. Images are named
// <Registry>/<name>:<Version>; a registry mirror or an air-gapped copy only
// needs a different Registry.
type Catalog struct {
	// Registry is the image repository prefix, e.g. "ghcr.io/kars-io".
	Registry string
	// Version is the tag of kars's own images (router, egress guard,
	// runtime adapters), normally the controller's own version.
	Version string
	// GitSyncImage fetches agent code from git (agentCode.git).
	GitSyncImage string
}

// Image returns the reference of a kars image.
func (c Catalog) Image(name string) string {
	return strings.TrimSuffix(c.Registry, "/") + "/" + name + ":" + c.Version
}

// Validate reports a catalog that cannot produce image references.
func (c Catalog) Validate() error {
	if c.Registry == "" || c.Version == "" {
		return fmt.Errorf("image catalog needs a registry and a version (got %q, %q)", c.Registry, c.Version)
	}
	if c.GitSyncImage == "" {
		return fmt.Errorf("image catalog needs a git-sync image")
	}
	return nil
}

// Runtime is the catalog entry resolved for one sandbox: what the runtime
// container runs and how the agent's code reaches it.
type Runtime struct {
	Kind karsv1.RuntimeKind
	// Language is the runtime's language (python, typescript, node, or
	// "" for BYO).
	Language string
	Image    string
	Command  []string
	Args     []string
	// Port is where the agent serves the contract's chat endpoint on
	// loopback.
	Port int32
	// Env is the runtime-specific environment, added after the contract's
	// variables.
	Env map[string]string
	// Code locates agent code to mount at AgentCodeDir; nil when the image
	// carries its own code.
	Code *karsv1.AgentCode
	// Config is the runtime's own configuration document, mounted at
	// AgentConfigDir/<ConfigFile>.
	Config     []byte
	ConfigFile string
}

// adapter is one first-class runtime in the catalog.
type adapter struct {
	image    string // image name without registry and tag
	language string
}

// Runtime resolves sb's runtime against the catalog. BYO images are used as
// given (byoImage, the digest-pinned reference whose contract label the
// controller verified, replaces spec.runtime.byo.image when non-empty).
func (c Catalog) Runtime(sb *karsv1.KarsSandbox, byoImage string) (*Runtime, error) {
	rs := sb.Spec.Runtime
	rt := &Runtime{Kind: rs.Kind, Port: DefaultAgentPort, Env: map[string]string{}}
	py := func(a adapter, entrypoint string, code *karsv1.AgentCode) {
		rt.Image, rt.Language, rt.Code = c.Image(a.image), a.language, code
		if entrypoint != "" {
			rt.Env["KARS_ENTRYPOINT"] = entrypoint
		}
	}
	switch rs.Kind {
	case karsv1.RuntimeOpenClaw:
		rt.Image, rt.Language = c.Image("kars-runtime-openclaw"), "node"
		if o := rs.OpenClaw; o != nil {
			if o.Image != "" {
				rt.Image = o.Image
			}
			if o.Config != nil && len(o.Config.Raw) > 0 {
				rt.Config, rt.ConfigFile = o.Config.Raw, "openclaw.json"
				rt.Env["OPENCLAW_CONFIG_PATH"] = AgentConfigDir + "/openclaw.json"
			}
		}
	case karsv1.RuntimeOpenAIAgents:
		o := deref(rs.OpenAIAgents)
		v := o.PythonVersion
		if v == "" {
			v = "3.12"
		}
		py(adapter{"kars-runtime-openai-agents", "python"}, o.Entrypoint, o.AgentCode)
		rt.Image += "-python" + v
	case karsv1.RuntimeMicrosoftAgentFramework:
		o := deref(rs.MicrosoftAgentFramework)
		if o.Language == "dotnet" {
			return nil, fail(ReasonShapeInvalid, "MicrosoftAgentFramework language dotnet has no adapter yet; use language: python")
		}
		py(adapter{"kars-runtime-microsoft-agent-framework", "python"}, o.Entrypoint, o.AgentCode)
	case karsv1.RuntimeLangGraph:
		o := deref(rs.LangGraph)
		lang := o.Language
		if lang == "" {
			lang = "python"
		}
		py(adapter{"kars-runtime-langgraph-" + lang, lang}, "", o.AgentCode)
		if o.Graph != "" {
			rt.Env["KARS_LANGGRAPH_GRAPH"] = o.Graph
		}
	case karsv1.RuntimeAnthropic:
		o := deref(rs.Anthropic)
		py(adapter{"kars-runtime-anthropic", "python"}, o.Entrypoint, o.AgentCode)
	case karsv1.RuntimePydanticAi:
		o := deref(rs.PydanticAi)
		py(adapter{"kars-runtime-pydantic-ai", "python"}, o.Entrypoint, o.AgentCode)
	case karsv1.RuntimeBYO:
		b := rs.BYO
		if b == nil {
			return nil, fail(ReasonShapeInvalid, "runtime.kind BYO needs a runtime.byo block")
		}
		rt.Image = b.Image
		if byoImage != "" {
			rt.Image = byoImage
		}
		rt.Command, rt.Args = b.Command, b.Args
		if b.Port != 0 {
			rt.Port = b.Port
		}
	case karsv1.RuntimeSemanticKernel:
		return nil, fail(ReasonAdapterMissing, "runtime SemanticKernel is reserved in the schema but its adapter image is not built yet")
	default:
		return nil, fail(ReasonShapeInvalid, "unknown runtime kind %q", rs.Kind)
	}
	return rt, nil
}

func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}
