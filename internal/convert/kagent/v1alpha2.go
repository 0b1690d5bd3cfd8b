package kagent

import (
	"fmt"
	"strings"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/convert/podmap"
)

// Reasons shared by both versions.
const (
	reasonMemory = "kars binds memory to an Azure AI Foundry memory store (KarsMemory), which kagent's memory cannot name; create a KarsMemory for the sandbox"
	reasonSkills = "kars does not load kagent skill images; bake the skills into the agent's image or the OpenClaw configuration (spec.runtime.openclaw.config)"
	reasonPodOps = "kars renders its own hardened pod (one agent container as UID 1000 beside its router); scheduling and pod-level settings are not carried"
)

// readV1alpha2 reads a kagent 0.x Agent: spec.type Declarative or BYO.
func readV1alpha2(a *source, idx *index) (*plan, error) {
	d := a.doc
	carryMetadata(d)
	p := &plan{name: a.GetName(), sourceNS: a.GetNamespace(), from: Group + "/" + V1alpha2 + "/Agent"}
	p.labels, p.annotations = sourceMeta(a)
	var err error
	if p.description, err = d.String("spec.description"); err != nil {
		return nil, err
	}
	typ, err := d.String("spec.type")
	if err != nil {
		return nil, err
	}
	d.Drop("spec.skills", reasonSkills)
	d.Drop("spec.allowedNamespaces", "kars sandboxes are reached across namespaces only through the mesh or the A2A gateway, never by Agent references")
	switch typ {
	case "Declarative", "":
		if !d.Has("spec.declarative") {
			return nil, fmt.Errorf("%s: spec.type is Declarative but spec.declarative is missing", d.Object())
		}
		if err := readDeclarative(p, a, idx, "spec.declarative"); err != nil {
			return nil, err
		}
		if err := readDeployment(p, d, "spec.declarative.deployment"); err != nil {
			return nil, err
		}
		d.Drop("spec.declarative.deployment.imageRegistry", "kars takes runtime images from its own catalog (the controller's --image-registry)")
	case "BYO":
		base := "spec.byo.deployment"
		image, err := d.String(base + ".image")
		if err != nil {
			return nil, err
		}
		if image == "" {
			return nil, fmt.Errorf("%s: spec.byo.deployment.image is required for a BYO agent", d.Object())
		}
		p.byo = &karsv1.BYORuntime{Image: image, ContractVersion: "v1"}
		cmd, err := d.String(base + ".cmd")
		if err != nil {
			return nil, err
		}
		if cmd != "" {
			p.byo.Command = []string{cmd}
		}
		if p.byo.Args, err = d.Strings(base + ".args"); err != nil {
			return nil, err
		}
		if err := readDeployment(p, d, base); err != nil {
			return nil, err
		}
		p.model = offline()
		p.note("%s: a BYO agent names no ModelConfig; its InferencePolicy uses the offline model until you set a provider (`kars credentials set %s`, `kars model set`)", p.name, p.name)
	default:
		return nil, fmt.Errorf("%s: spec.type %q is neither Declarative nor BYO", d.Object(), typ)
	}
	return p, nil
}

// readDeclarative reads the declarative agent fields at base (a v1alpha2
// spec.declarative, or a v1alpha3 AgentTemplate's spec).
func readDeclarative(p *plan, a *source, idx *index, base string) error {
	d := a.doc
	var err error
	if p.instructions, err = d.String(base + ".systemMessage"); err != nil {
		return err
	}
	if len(p.instructions) > 65536 {
		return fmt.Errorf("%s: %s.systemMessage is longer than the 65536 characters spec.agent.instructions holds", d.Object(), base)
	}
	d.Drop(base+".systemMessageFrom", "the converter does not read ConfigMaps or Secrets: paste the text into systemMessage and convert again (it becomes spec.agent.instructions)")
	d.Drop(base+".promptTemplate", "kars has no prompt templating; the instructions are used as written")
	d.Drop(base+".stream", "the runtime decides streaming per request; kars has no per-agent switch")
	d.Drop(base+".executeCodeBlocks", "kars agents run code only through tools the ToolPolicy allows (shell:* is denied)")
	d.Drop(base+".memory", reasonMemory)
	d.Drop(base+".context", "context compaction is the runtime's business; kars has no setting for it")
	mc, err := d.String(base + ".modelConfig")
	if err != nil {
		return err
	}
	if mc == "" {
		p.model = offline()
		p.note("%s: no modelConfig; the InferencePolicy uses the offline model until you set a provider", p.name)
	} else if err := readModelConfig(p, d, base+".modelConfig", mc, a.GetNamespace(), idx); err != nil {
		return err
	}
	if err := readTools(p, a, idx, base+".tools"); err != nil {
		return err
	}
	if err := readA2A(p, d, base+".a2aConfig"); err != nil {
		return err
	}
	return readA2A(p, d, base+".a2a") // kagent 1.0's name for the same block
}

// readDeployment reads kagent's SharedDeploymentSpec at base.
func readDeployment(p *plan, d *lossy.Doc, base string) error {
	replicas, set, err := d.Int(base + ".replicas")
	if err != nil {
		return err
	}
	switch {
	case set && replicas == 0:
		p.suspended = true
	case replicas > 1:
		d.Drop(base+".replicas", fmt.Sprintf("a KarsSandbox is one agent in one pod; %d replicas become one (scale with more sandboxes)", replicas))
	}
	p.env = podmap.Env(d, base+".env")
	podmap.EnvFrom(d, base+".envFrom")
	p.pullSecrets = podmap.PullSecrets(d, base+".imagePullSecrets")
	if p.resources, err = podmap.Resources(d, base+".resources"); err != nil {
		return err
	}
	for _, f := range []string{"volumes", "volumeMounts"} {
		d.Drop(base+"."+f, "the agent writes only to /sandbox and /tmp; kars mounts nothing else into it")
	}
	for _, f := range []string{"nodeSelector", "tolerations", "affinity", "labels", "annotations", "imagePullPolicy", "priorityClassName", "topologySpreadConstraints"} {
		d.Drop(base+"."+f, reasonPodOps)
	}
	d.Drop(base+".serviceAccountName", "kars gives each sandbox its own ServiceAccount with no token in the agent; cloud identity belongs to the router (InferencePolicy auth)")
	for _, f := range []string{"securityContext", "podSecurityContext"} {
		d.Drop(base+"."+f, "kars enforces its own security context (UID 1000, read-only root, no capabilities, seccomp); it cannot be loosened")
	}
	return nil
}

func offline() karsv1.ModelTarget {
	return karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}
}

// readModelConfig resolves the ModelConfig named at path into the plan's
// model target.
func readModelConfig(p *plan, d *lossy.Doc, path, name, ns string, idx *index) error {
	k := key(ns, name)
	if i := strings.IndexByte(name, '/'); i >= 0 {
		k = name
	}
	mc, ok := idx.modelConfigs[k]
	if !ok {
		d.Drop(path, fmt.Sprintf("ModelConfig %s is not in the input, so its provider and model cannot be carried: add it (kubectl get modelconfig %s -o yaml) and convert again; until then the InferencePolicy uses the offline model", k, name))
		p.model = offline()
		return nil
	}
	if !mc.used {
		mc.used = true
		carryMetadata(mc.doc)
	}
	t, err := modelTarget(mc.doc)
	if err != nil {
		return err
	}
	p.model = t
	return nil
}

// modelTarget maps a ModelConfig spec onto a ModelTarget. Sampling
// parameters are the agent's request parameters and are not pinned by
// kars.
func modelTarget(d *lossy.Doc) (karsv1.ModelTarget, error) {
	provider, err := d.String("spec.provider")
	if err != nil {
		return karsv1.ModelTarget{}, err
	}
	model, err := d.String("spec.model")
	if err != nil {
		return karsv1.ModelTarget{}, err
	}
	t := karsv1.ModelTarget{Model: model}
	var block string
	switch provider {
	case "OpenAI":
		t.Provider, block = karsv1.ProviderOpenAI, "spec.openAI"
		if t.Endpoint, err = d.String(block + ".baseUrl"); err != nil {
			return t, err
		}
		d.Drop(block+".organization", "the router authenticates with the key alone; set the organization on the key")
	case "AzureOpenAI":
		t.Provider, block = karsv1.ProviderAzureOpenAI, "spec.azureOpenAI"
		if t.Endpoint, err = d.String(block + ".azureEndpoint"); err != nil {
			return t, err
		}
		if t.APIVersion, err = d.String(block + ".apiVersion"); err != nil {
			return t, err
		}
		if t.Deployment, err = d.String(block + ".azureDeployment"); err != nil {
			return t, err
		}
		if t.Deployment == "" {
			t.Deployment = model
		}
		d.Drop(block+".azureAdToken", "the router obtains Entra tokens itself (InferencePolicy auth WorkloadIdentity); a static token is not carried")
		d.Drop(block+".azureAdTokenProvider", "the router obtains Entra tokens itself (InferencePolicy auth WorkloadIdentity)")
	case "Anthropic":
		t.Provider, block = karsv1.ProviderAnthropic, "spec.anthropic"
		if t.Endpoint, err = d.String(block + ".baseUrl"); err != nil {
			return t, err
		}
	case "Ollama":
		t.Provider, block = karsv1.ProviderOpenAICompatible, "spec.ollama"
		host, err := d.String(block + ".host")
		if err != nil {
			return t, err
		}
		if host == "" {
			host = "http://localhost:11434"
		}
		if !strings.Contains(host, "://") {
			host = "http://" + host
		}
		t.Endpoint = strings.TrimSuffix(host, "/") + "/v1"
		d.Drop(block+".options", "Ollama model options are request parameters; kars does not pin them")
	default:
		d.Drop("spec.provider", fmt.Sprintf("provider %q has no kars broker (kars brokers AzureOpenAI, AzureAIFoundry, OpenAI, GitHubModels, Anthropic and OpenAI-compatible endpoints); the InferencePolicy uses the offline model", provider))
		for _, b := range []string{"spec.gemini", "spec.geminiVertexAI", "spec.anthropicVertexAI", "spec.model"} {
			d.Drop(b, fmt.Sprintf("part of the %s provider settings, which have no kars broker", provider))
		}
		dropSecret(d)
		return offline(), nil
	}
	if block != "" {
		for _, f := range []string{"temperature", "maxTokens", "topP", "topK", "frequencyPenalty", "presencePenalty", "seed", "n", "timeout", "reasoningEffort", "stopSequences", "maxRetries"} {
			d.Drop(block+"."+f, "a sampling or client parameter of the agent's requests; kars does not pin it (token caps live in InferencePolicy.tokenBudget)")
		}
	}
	if model == "" {
		return t, fmt.Errorf("%s: spec.model is required", d.Object())
	}
	secret, err := d.String("spec.apiKeySecret")
	if err != nil {
		return t, err
	}
	secretKey, err := d.String("spec.apiKeySecretKey")
	if err != nil {
		return t, err
	}
	switch {
	case secret != "":
		if secretKey == "" {
			return t, fmt.Errorf("%s: spec.apiKeySecret is set without spec.apiKeySecretKey", d.Object())
		}
		t.Auth = &karsv1.ProviderAuth{Mode: karsv1.AuthAPIKey, SecretRef: &karsv1.SecretKeyReference{Name: secret, Key: secretKey}}
	case t.Provider == karsv1.ProviderOpenAICompatible:
		t.Auth = &karsv1.ProviderAuth{Mode: karsv1.AuthNone}
	case t.Provider == karsv1.ProviderAzureOpenAI:
		t.Auth = &karsv1.ProviderAuth{Mode: karsv1.AuthWorkloadIdentity}
	}
	d.Drop("spec.defaultHeaders", "the router sets upstream headers itself; extra static headers are not carried")
	d.Drop("spec.tls", "the router verifies providers against the system trust store; custom CA settings are not carried")
	return t, nil
}

func dropSecret(d *lossy.Doc) {
	d.Drop("spec.apiKeySecret", "the provider is not carried, so neither is its key")
	d.Drop("spec.apiKeySecretKey", "the provider is not carried, so neither is its key")
}

// readA2A carries a2aConfig skills onto spec.a2a.advertisedSkills.
func readA2A(p *plan, d *lossy.Doc, base string) error {
	seen := map[string]bool{}
	for i := range d.Len(base + ".skills") {
		sp := fmt.Sprintf("%s.skills[%d]", base, i)
		id, err := d.String(sp + ".id")
		if err != nil {
			return err
		}
		display, _ := d.Peek(sp + ".name")
		if id == "" {
			id, _ = display.(string)
		}
		name := skillName(id)
		if name == "" || seen[name] {
			d.Drop(sp, "a skill needs a unique id")
			continue
		}
		seen[name] = true
		desc, err := d.String(sp + ".description")
		if err != nil {
			return err
		}
		if len(desc) > 1024 {
			d.Drop(sp+".description", "longer than the 1024 characters a kars skill description holds; truncated")
			desc = desc[:1024]
		}
		if s, _ := display.(string); s != "" && s != id {
			d.Drop(sp+".name", "kars skills have one name (the id) and a description; the display name is not carried")
		} else {
			d.Carry(sp + ".name")
		}
		for _, f := range []string{"tags", "examples", "inputModes", "outputModes"} {
			d.Drop(sp+"."+f, "kars agent cards publish each skill's name and description only")
		}
		if len(p.skills) == 32 {
			d.Drop(sp, "a KarsSandbox advertises at most 32 skills")
			continue
		}
		p.skills = append(p.skills, karsv1.A2ASkill{Name: name, Description: desc})
	}
	return nil
}
