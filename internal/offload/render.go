package offload

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// Labels and annotations of an offload's namespace and sandbox. The
// namespace is the unit of an offload: it is created first, carries the
// offload's record, and its deletion ends everything in it.
const (
	// LabelOffload marks offload namespaces and sandboxes ("true"), as in
	// the use cases' example.
	LabelOffload = "kars.io/offload"
	// LabelPairing names the offload pairing (its name; the namespace
	// is in AnnotationPairing, since a label cannot hold a slash).
	LabelPairing = "kars.io/pairing"
	// LabelID is the offload's id.
	LabelID = "kars.io/offload-id"

	AnnotationPairing = "kars.io/offload-pairing"      // "namespace/name" of the pairing
	AnnotationPeer    = "kars.io/offload-peer"         // the host's DID
	AnnotationRequest = "kars.io/offload-request"      // the host's request id
	AnnotationTitle   = "kars.io/offload-title"        // the task's title
	AnnotationTask    = "kars.io/offload-task-sha256"  // the task's SHA-256
	AnnotationExpires = "kars.io/offload-expires-at"   // RFC 3339: the TTL's end
	AnnotationTokens  = "kars.io/offload-tokens"       // the allocation
	AnnotationEnd     = "kars.io/offload-end"          // why the offload is ending
	AnnotationReady   = "kars.io/offload-ready-sent"   // the host was told it is ready
	AnnotationSettled = "kars.io/offload-tokens-used"  // its use, once charged to the pairing
	AnnotationUsed    = "kars.io/offload-tokens-seen"  // its use as last read from its router
	AnnotationStarted = "kars.io/offload-requested-at" // RFC 3339
)

// End reasons.
const (
	EndAcknowledged = "acknowledged"
	EndHandedOff    = "handed_off"
	EndTTL          = "ttl"
	EndExpired      = "pairing_expired"
	EndRevoked      = "pairing_revoked"
	EndDeleted      = "pairing_deleted"
)

// NamespacePrefix starts every offload namespace.
const NamespacePrefix = "kars-offload-"

// Namespace is the namespace of offload id.
func Namespace(id string) string { return NamespacePrefix + id }

// SandboxName is the KarsSandbox of offload id.
func SandboxName(id string) string { return "offload-" + id }

// Input is what an offload sandbox is made of.
type Input struct {
	ID      string
	Pairing *karsv1.KarsPairing
	// Template is the pairing's spec.offload.inferenceRef.
	Template *karsv1.InferencePolicy
	// Secrets are the Secrets the template's targets authenticate with,
	// by name; each is copied into the offload namespace (only the keys
	// referenced), for the offload's router alone to mount.
	Secrets map[string]*corev1.Secret
	PeerDID string
	Request *Request
	// Tokens is the allocation (0: the template's own budget applies).
	Tokens    int64
	CreatedAt time.Time
	ExpiresAt time.Time
}

// Objects renders an offload's objects in creation order: the namespace,
// copied credentials, the InferencePolicy (the template's models, the
// offload's token allocation as its budget), the ToolPolicy, the
// KarsPairing that lets the host's identity talk to the offload's router,
// and the KarsSandbox shaped like the use cases' example. The
// KarsPairing's status (bound to the host) is set after it is created.
func Objects(in Input) ([]client.Object, error) {
	p := in.Pairing
	switch {
	case !ValidID(in.ID):
		return nil, fmt.Errorf("offload id %q is not 8 hex digits", in.ID)
	case p == nil || p.Spec.Offload == nil:
		return nil, errors.New("the pairing has no offload template")
	case in.Template == nil:
		return nil, errors.New("the offload template's InferencePolicy is missing")
	case in.Request == nil || in.Request.Task == nil:
		return nil, errors.New("no offload request")
	}
	ns, name := Namespace(in.ID), SandboxName(in.ID)
	labels := func() map[string]string {
		return map[string]string{LabelOffload: "true", LabelPairing: p.Name, LabelID: in.ID}
	}
	meta := func(n string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: n, Namespace: ns, Labels: labels()}
	}
	nsLabels := labels()
	nsLabels["kars.io/sandbox-namespace"] = "true"
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: nsLabels, Annotations: map[string]string{
		AnnotationPairing: p.Namespace + "/" + p.Name,
		AnnotationPeer:    in.PeerDID,
		AnnotationRequest: in.Request.ID,
		AnnotationTitle:   in.Request.Task.Title,
		AnnotationTask:    in.Request.Task.SHA256,
		AnnotationStarted: in.CreatedAt.UTC().Format(time.RFC3339),
		AnnotationExpires: in.ExpiresAt.UTC().Format(time.RFC3339),
		AnnotationTokens:  strconv.FormatInt(in.Tokens, 10),
	}}}
	objs := []client.Object{nsObj}

	ip := &karsv1.InferencePolicy{ObjectMeta: meta(name + "-inference"), Spec: *in.Template.Spec.DeepCopy()}
	targets := append([]*karsv1.ModelTarget{&ip.Spec.ModelPreference.Primary}, ptrs(ip.Spec.ModelPreference.Fallbacks)...)
	copied := map[string]*corev1.Secret{}
	for _, t := range targets {
		if t.Auth == nil || t.Auth.SecretRef == nil {
			continue
		}
		ref := t.Auth.SecretRef
		src, ok := in.Secrets[ref.Name]
		if !ok || src.Data[ref.Key] == nil {
			return nil, fmt.Errorf("the offload template %s authenticates with Secret %s key %q, which is missing", in.Template.Name, ref.Name, ref.Key)
		}
		c := copied[ref.Name]
		if c == nil {
			c = &corev1.Secret{ObjectMeta: meta(ref.Name), Type: corev1.SecretTypeOpaque, Data: map[string][]byte{}}
			copied[ref.Name] = c
		}
		c.Data[ref.Key] = append([]byte(nil), src.Data[ref.Key]...)
	}
	names := make([]string, 0, len(copied))
	for n := range copied {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		objs = append(objs, copied[n])
	}
	if in.Tokens > 0 {
		// The allocation bounds both windows: the router's ledger rolls
		// its daily window at midnight, and the monthly one keeps an
		// offload that spans midnight within its share. The reserve
		// rule is blueprint's: a small budget must not refuse every call.
		ip.Spec.TokenBudget = &karsv1.TokenBudget{Daily: in.Tokens, Monthly: in.Tokens, DefaultReserve: min(4096, max(16, in.Tokens/8))}
	}
	objs = append(objs, ip, toolPolicy(meta(name+"-policy"), p.Name))

	caps := append([]karsv1.PairingCapability(nil), p.Spec.Capabilities...)
	kp := &karsv1.KarsPairing{ObjectMeta: meta(p.Name), Spec: karsv1.KarsPairingSpec{
		TokenHash: p.Spec.TokenHash, DisplayName: p.Spec.DisplayName, ExpiresAt: metav1.NewTime(in.ExpiresAt.UTC().Truncate(time.Second)),
		Slots: 1, Capabilities: caps, SandboxRef: &karsv1.LocalObjectReference{Name: name},
	}}
	objs = append(objs, kp)

	t := p.Spec.Offload
	rt := karsv1.RuntimeSpec{Kind: karsv1.RuntimeOpenClaw}
	if t.Runtime != nil {
		rt = *t.Runtime.DeepCopy()
	}
	iso := t.Isolation
	if iso == "" {
		iso = karsv1.IsolationEnhanced
	}
	deny := true
	instructions := t.Instructions
	if instructions == "" {
		instructions = DefaultInstructions
	}
	sb := &karsv1.KarsSandbox{ObjectMeta: meta(name), Spec: karsv1.KarsSandboxSpec{
		Runtime:       rt,
		InferenceRef:  karsv1.LocalObjectReference{Name: ip.Name},
		Sandbox:       karsv1.SandboxIsolationSpec{Isolation: iso},
		Governance:    karsv1.GovernanceSpec{ToolPolicyRef: &karsv1.LocalObjectReference{Name: name + "-policy"}},
		NetworkPolicy: karsv1.SandboxNetworkPolicy{DefaultDeny: &deny},
		Agent:         &karsv1.AgentSpec{Instructions: instructions},
	}}
	return append(objs, sb), nil
}

// DefaultInstructions are an offload agent's system instructions when the
// template names none.
const DefaultInstructions = "You run one task that a paired host offloaded to this governed sandbox. " +
	"The task arrives as a message; do it with the tools you have and answer with the complete result: " +
	"your answer is sent back to the host."

func ptrs(ts []karsv1.ModelTarget) []*karsv1.ModelTarget {
	out := make([]*karsv1.ModelTarget, len(ts))
	for i := range ts {
		out[i] = &ts[i]
	}
	return out
}

// toolPolicy is an offload sandbox's ToolPolicy: inference, the contract's
// workspace tools, and the mesh with its host only (the pairing's name is
// how the router names the host). No web fetches, no other peers, no
// shell: an offload does one task for one host.
func toolPolicy(meta metav1.ObjectMeta, peer string) *karsv1.ToolPolicy {
	return &karsv1.ToolPolicy{ObjectMeta: meta, Spec: karsv1.ToolPolicySpec{
		Rules: []karsv1.ToolRule{
			{Name: "inference", Effect: karsv1.EffectAllow, Actions: []string{"inference:*"}},
			{Name: "read-only-tools", Effect: karsv1.EffectAllow, Actions: []string{"tool:calculator", "tool:current_time", "tool:list_files", "tool:read_file"}},
			{Name: "workspace-writes", Effect: karsv1.EffectAllow, Actions: []string{"tool:write_file"},
				RateLimit: &karsv1.RuleRateLimit{Requests: 30, WindowSeconds: 60}},
			{Name: "host", Effect: karsv1.EffectAllow, Actions: []string{"mesh:send:" + peer, "mesh:receive:" + peer},
				RateLimit: &karsv1.RuleRateLimit{Requests: 120, WindowSeconds: 60}},
			{Name: "no-shell", Effect: karsv1.EffectDeny, Actions: []string{"shell:*"}, Priority: 100},
		},
	}}
}
