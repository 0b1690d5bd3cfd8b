// Package kagent converts kagent agents into kars resource bundles: one
// KarsSandbox with its InferencePolicy and ToolPolicy (and McpServers where
// the agent's tool servers map) per Agent.
//
// It reads kagent.dev/v1alpha2 Agents (Declarative and BYO) with the
// ModelConfig, RemoteMCPServer and MCPServer objects they reference, and
// kagent 1.0's kagent.dev/v1alpha3 Agent, AgentTemplate and Harness. Every
// source field without a kars analog is named in Result.Lossy (see
// internal/convert/lossy): fields the converter does not recognise are
// reported too, never silently dropped. docs/migration.md holds the
// field-mapping tables this code implements.
//
// Convert is pure: manifests in, objects out. The caller passes the
// migration date.
package kagent

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/convert/manifest"
)

// Group is kagent's API group.
const Group = "kagent.dev"

// The kagent versions this package reads.
const (
	V1alpha2 = "v1alpha2"
	V1alpha3 = "v1alpha3"
)

// Annotations the converter puts on every object it emits.
const (
	AnnotationMigratedFrom   = "kars.io/migrated-from"   // "kagent.dev/v1alpha2/Agent"
	AnnotationMigrationDate  = "kars.io/migration-date"  // "2026-04-30"
	AnnotationMigratedObject = "kars.io/migrated-object" // "kagent/k8s-agent"
	AnnotationDescription    = "kars.io/description"
)

// Options shape the output.
type Options struct {
	// Namespace for every emitted object; empty means kars-<agent name>,
	// the kars convention.
	Namespace string
	// Isolation of the sandboxes; empty means derived from the source
	// (kagent 1.0's substrate) or enhanced.
	Isolation karsv1.IsolationLevel
	// Date is the migration date written into kars.io/migration-date.
	Date time.Time
}

// Result is the conversion of one input stream.
type Result struct {
	// Objects in apply order: per agent, Namespace, InferencePolicy,
	// ToolPolicy, McpServers, KarsSandbox. Each carries apiVersion and kind.
	Objects []Object
	// Lossy names every source field that was not carried over.
	Lossy []lossy.Field
	// Notes are things to do that lose nothing (create a Secret the
	// InferencePolicy references, check an image's contract label).
	Notes []string
	// Skipped names input objects of other kinds, left alone.
	Skipped []string
}

// Object is an emitted object with its type information set.
type Object interface {
	metav1.Object
	GetObjectKind() schema.ObjectKind
}

// source is an input object with its tracker.
type source struct {
	manifest.Object
	doc  *lossy.Doc
	used bool
}

// index holds the support objects agents reference, by namespace/name.
type index struct {
	modelConfigs map[string]*source
	remoteMCP    map[string]*source
	mcpServers   map[string]*source
	templates    map[string]*source
	harnesses    map[string]*source
}

func key(ns, name string) string { return ns + "/" + name }

// Convert converts every kagent Agent of in.
func Convert(in []manifest.Object, o Options) (*Result, error) {
	res := &Result{}
	idx := index{map[string]*source{}, map[string]*source{}, map[string]*source{}, map[string]*source{}, map[string]*source{}}
	var agents []*source
	for _, obj := range in {
		gv, _ := schema.ParseGroupVersion(obj.GetAPIVersion())
		if gv.Group != Group {
			why := "not a kagent object"
			if gv.Group == "agents.x-k8s.io" {
				why = "an agent-sandbox object: convert it with `kars convert -f FILE --to karssandbox`"
			}
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s (%s): %s", obj.Ref(), obj.Source, why))
			continue
		}
		// kmcp's MCPServer is still served as v1alpha1 next to v1alpha2 agents.
		mcp := gv.Version == "v1alpha1" && obj.GetKind() == "MCPServer"
		if gv.Version != V1alpha2 && gv.Version != V1alpha3 && !mcp {
			return nil, &manifest.Error{Source: obj.Source, Err: fmt.Errorf(
				"%s: apiVersion %s is not one this converter reads (kagent.dev/v1alpha2 from kagent 0.x, kagent.dev/v1alpha3 from kagent 1.0)", obj.Ref(), obj.GetAPIVersion())}
		}
		s := &source{Object: obj, doc: lossy.New(obj.Ref(), obj.Object)}
		k := key(obj.GetNamespace(), obj.GetName())
		switch obj.GetKind() {
		case "Agent":
			agents = append(agents, s)
		case "ModelConfig":
			idx.modelConfigs[k] = s
		case "RemoteMCPServer":
			idx.remoteMCP[k] = s
		case "MCPServer":
			idx.mcpServers[k] = s
		case "AgentTemplate":
			idx.templates[k] = s
		case "Harness":
			idx.harnesses[k] = s
		default:
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s (%s): kagent kind without a kars counterpart", obj.Ref(), obj.Source))
		}
	}
	if len(agents) == 0 {
		return nil, fmt.Errorf("no kagent Agent in the input (found %d other objects); pass the Agent manifests (kubectl get agents -o yaml)", len(in))
	}
	out := newBundle(o)
	for _, a := range agents {
		var p *plan
		var err error
		if a.GetAPIVersion() == Group+"/"+V1alpha2 {
			p, err = readV1alpha2(a, &idx)
		} else {
			p, err = readV1alpha3(a, &idx)
		}
		if err != nil {
			return nil, &manifest.Error{Source: a.Source, Err: err}
		}
		if err := out.add(p); err != nil {
			return nil, &manifest.Error{Source: a.Source, Err: err}
		}
		res.Lossy = append(res.Lossy, a.doc.Lossy()...)
	}
	for _, group := range []map[string]*source{idx.modelConfigs, idx.remoteMCP, idx.mcpServers, idx.templates, idx.harnesses} {
		for _, k := range slices.Sorted(maps.Keys(group)) {
			s := group[k]
			if !s.used {
				res.Skipped = append(res.Skipped, fmt.Sprintf("%s (%s): referenced by no Agent in the input", s.Ref(), s.Source))
				continue
			}
			res.Lossy = append(res.Lossy, s.doc.Lossy()...)
		}
	}
	res.Objects = out.objects()
	res.Notes = out.notes
	return res, nil
}

// carryMetadata marks the metadata a converter keeps or has no use for.
// Labels and annotations are copied to the KarsSandbox by the caller.
func carryMetadata(d *lossy.Doc) {
	for _, p := range []string{"apiVersion", "kind", "metadata.name", "metadata.namespace", "metadata.uid",
		"metadata.resourceVersion", "metadata.generation", "metadata.creationTimestamp", "metadata.managedFields",
		"metadata.selfLink", "metadata.finalizers", "metadata.ownerReferences", "metadata.deletionTimestamp",
		"metadata.deletionGracePeriodSeconds", "metadata.generateName", "metadata.labels", "metadata.annotations", "status"} {
		d.Carry(p)
	}
}

// sourceMeta returns the labels and annotations worth keeping.
func sourceMeta(s *source) (labels, annotations map[string]string) {
	labels = maps.Clone(s.GetLabels())
	annotations = maps.Clone(s.GetAnnotations())
	delete(annotations, "kubectl.kubernetes.io/last-applied-configuration")
	return labels, annotations
}

// sandboxName checks that the agent's name can name a KarsSandbox and its
// Service.
func sandboxName(name string) error {
	const maxLen = 63 - len("-router-admin")
	if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
		return fmt.Errorf("agent name %q cannot name a KarsSandbox (its router Service needs a DNS-1035 label): %s; rename the agent", name, errs[0])
	}
	if len(name) > maxLen {
		return fmt.Errorf("agent name %q is longer than the %d characters a KarsSandbox name may have; rename the agent", name, maxLen)
	}
	return nil
}

// plan is what an Agent of either version says, in kars terms.
type plan struct {
	name         string
	sourceNS     string
	from         string // "kagent.dev/v1alpha2/Agent"
	labels       map[string]string
	annotations  map[string]string
	description  string
	instructions string
	model        karsv1.ModelTarget
	byo          *karsv1.BYORuntime
	env          []karsv1.RuntimeEnvVar
	pullSecrets  []karsv1.LocalObjectReference
	resources    *corev1.ResourceRequirements
	suspended    bool
	isolation    karsv1.IsolationLevel
	allowedHosts []karsv1.Hostname
	servers      []mcpServer
	rules        []karsv1.ToolRule
	skills       []karsv1.A2ASkill
	notes        []string
}

func (p *plan) note(format string, args ...any) {
	p.notes = append(p.notes, fmt.Sprintf(format, args...))
}

// bundle collects the emitted objects of every agent.
type bundle struct {
	o          Options
	namespaces map[string]bool
	servers    map[string]*karsv1.McpServer
	objs       []Object
	notes      []string
	names      map[string]string // sandbox key → source object, to refuse duplicates
}

func newBundle(o Options) *bundle {
	return &bundle{o: o, namespaces: map[string]bool{}, servers: map[string]*karsv1.McpServer{}, names: map[string]string{}}
}

func (b *bundle) objects() []Object { return b.objs }

func (b *bundle) add(p *plan) error {
	if err := sandboxName(p.name); err != nil {
		return err
	}
	ns := b.o.Namespace
	if ns == "" {
		ns = "kars-" + p.name
	}
	k := key(ns, p.name)
	if prev, dup := b.names[k]; dup {
		return fmt.Errorf("two agents named %s would become the same KarsSandbox %s (the other is %s); convert them with different --namespace values", p.name, k, prev)
	}
	b.names[k] = p.sourceNS + "/" + p.name
	annotations := map[string]string{
		AnnotationMigratedFrom:   p.from,
		AnnotationMigrationDate:  b.o.Date.UTC().Format(time.DateOnly),
		AnnotationMigratedObject: p.sourceNS + "/" + p.name,
	}
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"kars.io/sandbox": p.name}, Annotations: maps.Clone(annotations)}
	}
	if !b.namespaces[ns] {
		b.namespaces[ns] = true
		b.objs = append(b.objs, &corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"kars.io/sandbox-namespace": "true"}},
		})
	}
	ip := &karsv1.InferencePolicy{TypeMeta: typeMeta("InferencePolicy"), ObjectMeta: meta(blueprint.InferencePolicyName(p.name)),
		Spec: karsv1.InferencePolicySpec{ModelPreference: karsv1.ModelPreference{Primary: p.model}}}
	if s := p.model.Auth; s != nil && s.SecretRef != nil {
		p.note("%s: create Secret %s/%s with key %s holding the %s API key (only the router mounts it)", p.name, ns, s.SecretRef.Name, s.SecretRef.Key, p.model.Provider)
	}
	tp := &karsv1.ToolPolicy{TypeMeta: typeMeta("ToolPolicy"), ObjectMeta: meta(blueprint.ToolPolicyName(p.name)),
		Spec: karsv1.ToolPolicySpec{Rules: toolRules(p)}}
	b.objs = append(b.objs, ip, tp)
	for _, s := range p.servers {
		sk := key(ns, s.name)
		if have, ok := b.servers[sk]; ok {
			have.Spec.Sandboxes = appendUnique(have.Spec.Sandboxes, p.name)
			if len(have.Spec.Tools) > 0 {
				if len(s.spec.Tools) == 0 {
					have.Spec.Tools = nil // one agent uses every tool
				} else {
					for _, t := range s.spec.Tools {
						have.Spec.Tools = appendUnique(have.Spec.Tools, t)
					}
				}
			}
			continue
		}
		m := &karsv1.McpServer{TypeMeta: typeMeta("McpServer"), ObjectMeta: meta(s.name), Spec: s.spec}
		delete(m.Labels, "kars.io/sandbox")
		m.Spec.Sandboxes = []string{p.name}
		b.servers[sk] = m
		b.objs = append(b.objs, m)
	}

	sbAnnotations := maps.Clone(p.annotations)
	if sbAnnotations == nil {
		sbAnnotations = map[string]string{}
	}
	maps.Copy(sbAnnotations, annotations)
	if p.description != "" {
		sbAnnotations[AnnotationDescription] = p.description
	}
	labels := maps.Clone(p.labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels["kars.io/sandbox"] = p.name
	isolation := b.o.Isolation
	if isolation == "" {
		isolation = p.isolation
	}
	if isolation == "" {
		isolation = karsv1.IsolationEnhanced
	}
	sb := &karsv1.KarsSandbox{TypeMeta: typeMeta("KarsSandbox"),
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: ns, Labels: labels, Annotations: sbAnnotations},
		Spec: karsv1.KarsSandboxSpec{
			Runtime:      karsv1.RuntimeSpec{Kind: karsv1.RuntimeOpenClaw, Env: p.env, ImagePullSecrets: p.pullSecrets},
			InferenceRef: karsv1.LocalObjectReference{Name: ip.Name},
			Sandbox:      karsv1.SandboxIsolationSpec{Isolation: isolation, ReadOnlyRootFilesystem: ptr(true), RunAsNonRoot: ptr(true)},
			Governance:   karsv1.GovernanceSpec{Enabled: ptr(true), ToolPolicyRef: &karsv1.LocalObjectReference{Name: tp.Name}},
			NetworkPolicy: karsv1.SandboxNetworkPolicy{DefaultDeny: ptr(true), EgressMode: karsv1.EgressStrict,
				AllowedHosts: p.allowedHosts},
			Suspended:             p.suspended,
			Resources:             p.resources,
			UpstreamCompatibility: &karsv1.UpstreamCompatibility{SigsAgentSandbox: "off"},
		},
	}
	if p.byo != nil {
		sb.Spec.Runtime.Kind = karsv1.RuntimeBYO
		sb.Spec.Runtime.BYO = p.byo
		p.note("%s: image %s must implement the kars runtime contract and carry the label org.kars.runtime.contract=v1 (docs/runtime-contract.md); the controller checks it before the pod starts", p.name, p.byo.Image)
	}
	if p.instructions != "" {
		sb.Spec.Agent = &karsv1.AgentSpec{Instructions: p.instructions}
	}
	if len(p.skills) > 0 {
		sb.Spec.A2A.AdvertisedSkills = p.skills
		p.note("%s: A2A skills are advertised on the card but exposure stays off: set spec.a2a.enabled with allowedCallers, expiresAt and rateLimit to accept calls", p.name)
	}
	b.objs = append(b.objs, sb)
	b.notes = append(b.notes, p.notes...)
	return nil
}

func typeMeta(kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: karsv1.GroupVersion.String(), Kind: kind}
}

func ptr[T any](v T) *T { return &v }

func appendUnique(l []string, s string) []string {
	if slices.Contains(l, s) {
		return l
	}
	return append(l, s)
}

// toolRules is the ToolPolicy of a migrated agent: inference, the MCP tools
// the agent was given (approval where kagent required it), no shell.
// Everything else stays denied by the engine's default.
func toolRules(p *plan) []karsv1.ToolRule {
	rules := []karsv1.ToolRule{{Name: "inference", Effect: karsv1.EffectAllow, Actions: []string{"inference:*"}}}
	rules = append(rules, p.rules...)
	return append(rules, karsv1.ToolRule{Name: "no-shell", Effect: karsv1.EffectDeny, Actions: []string{"shell:*"}, Priority: 100})
}

// chunkRules splits actions into rules of at most 64 actions (the schema's
// bound), named base, base-2, ….
func chunkRules(base string, effect karsv1.RuleEffect, priority int32, actions []string) []karsv1.ToolRule {
	var out []karsv1.ToolRule
	for i := 0; i < len(actions); i += 64 {
		name := base
		if i > 0 {
			name = fmt.Sprintf("%s-%d", base, i/64+1)
		}
		out = append(out, karsv1.ToolRule{Name: name, Effect: effect, Priority: priority, Actions: actions[i:min(i+64, len(actions))]})
	}
	return out
}

// skillName makes a kagent skill id usable as a kars skill name.
func skillName(id string) string {
	var b strings.Builder
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := b.String()
	if len(s) > 128 {
		s = s[:128]
	}
	return s
}
