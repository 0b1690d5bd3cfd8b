package kagent

import (
	"fmt"
	"regexp"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/podmap"
)

// kagent 1.0 (kagent.dev/v1alpha3) splits an agent in three: an
// AgentTemplate holds the declarative part (system message, model, tools,
// A2A skills), a Harness holds a BYO runtime (image, command, env), and an
// Agent instantiates a template or a harness on the Agent Substrate
// (gVisor or microVM isolation, suspend/resume) behind an egress gateway.
// The field names read here are documented in docs/migration.md; a field
// this converter does not know is reported as lossy, never dropped quietly.

// hostname is the KarsSandbox's Hostname pattern.
var hostname = regexp.MustCompile(`^([*][.])?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$`)

func readV1alpha3(a *source, idx *index) (*plan, error) {
	d := a.doc
	carryMetadata(d)
	p := &plan{name: a.GetName(), sourceNS: a.GetNamespace(), from: Group + "/" + V1alpha3 + "/Agent"}
	p.labels, p.annotations = sourceMeta(a)
	var err error
	if p.description, err = d.String("spec.description"); err != nil {
		return nil, err
	}
	tmpl, err := d.String("spec.templateRef.name")
	if err != nil {
		return nil, err
	}
	harness, err := d.String("spec.harnessRef.name")
	if err != nil {
		return nil, err
	}
	switch {
	case tmpl != "" && harness != "":
		return nil, fmt.Errorf("%s: spec.templateRef and spec.harnessRef are both set; an agent runs one or the other", d.Object())
	case tmpl != "":
		t, ok := idx.templates[key(a.GetNamespace(), tmpl)]
		if !ok {
			return nil, fmt.Errorf("%s: AgentTemplate %s/%s is not in the input; add it (kubectl get agenttemplate %s -o yaml) and convert again", d.Object(), a.GetNamespace(), tmpl, tmpl)
		}
		if !t.used {
			t.used = true
			carryMetadata(t.doc)
		}
		if err := readDeclarative(p, t, idx, "spec"); err != nil {
			return nil, err
		}
		t.doc.Carry("spec.description")
		t.doc.Drop("spec.skills", reasonSkills)
	case harness != "":
		h, ok := idx.harnesses[key(a.GetNamespace(), harness)]
		if !ok {
			return nil, fmt.Errorf("%s: Harness %s/%s is not in the input; add it (kubectl get harness %s -o yaml) and convert again", d.Object(), a.GetNamespace(), harness, harness)
		}
		if !h.used {
			h.used = true
			carryMetadata(h.doc)
		}
		if err := readHarness(p, h); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%s: neither spec.templateRef nor spec.harnessRef is set", d.Object())
	}
	// Per-agent overrides of the template.
	if s, err := d.String("spec.systemMessage"); err != nil {
		return nil, err
	} else if s != "" {
		p.instructions = s
	}
	if mc, err := d.String("spec.modelConfig"); err != nil {
		return nil, err
	} else if mc != "" {
		if err := readModelConfig(p, d, "spec.modelConfig", mc, a.GetNamespace(), idx); err != nil {
			return nil, err
		}
	}
	if err := readTools(p, a, idx, "spec.tools"); err != nil {
		return nil, err
	}
	if err := readSubstrate(p, a); err != nil {
		return nil, err
	}
	return p, nil
}

func readHarness(p *plan, h *source) error {
	d := h.doc
	image, err := d.String("spec.image")
	if err != nil {
		return err
	}
	if image == "" {
		return fmt.Errorf("%s: spec.image is required", d.Object())
	}
	p.byo = &karsv1.BYORuntime{Image: image, ContractVersion: "v1"}
	if p.byo.Command, err = d.Strings("spec.command"); err != nil {
		return err
	}
	if p.byo.Args, err = d.Strings("spec.args"); err != nil {
		return err
	}
	port, set, err := d.Int("spec.port")
	if err != nil {
		return err
	}
	if set {
		switch {
		case port < 1024 || port > 65535 || port == 8443 || port == 8444 || port == 8445:
			d.Drop("spec.port", fmt.Sprintf("port %d is below 1024 or one of the router's ports 8443-8445; the agent listens on kars's default 18789", port))
		default:
			p.byo.Port = int32(port)
		}
	}
	d.Carry("spec.description")
	d.Drop("spec.protocol", "kars talks to the agent through the runtime contract's chat endpoint; A2A reaches it through the router (spec.a2a)")
	p.env = podmap.Env(d, "spec.env")
	podmap.EnvFrom(d, "spec.envFrom")
	if p.resources, err = podmap.Resources(d, "spec.resources"); err != nil {
		return err
	}
	p.model = offline()
	p.note("%s: a Harness names no ModelConfig; the InferencePolicy uses the offline model until you set a provider (`kars credentials set %s`)", p.name, p.name)
	return nil
}

// readSubstrate maps the Agent Substrate's isolation and lifecycle, and the
// egress gateway's allowlist.
func readSubstrate(p *plan, a *source) error {
	d := a.doc
	iso, err := d.String("spec.substrate.isolation")
	if err != nil {
		return err
	}
	switch iso {
	case "":
	case "microVM", "MicroVM":
		p.isolation = karsv1.IsolationConfidential
	case "gVisor", "GVisor":
		p.isolation = karsv1.IsolationEnhanced
		d.Drop("spec.substrate.isolation", "kars has no gVisor runtime class: the sandbox uses enhanced isolation (the kars-strict seccomp profile); choose confidential (a Kata microVM) with --isolation for a VM boundary")
	default:
		d.Drop("spec.substrate.isolation", fmt.Sprintf("isolation %q is neither gVisor nor microVM; kars uses enhanced isolation", iso))
	}
	susp, _, err := d.Bool("spec.substrate.suspended")
	if err != nil {
		return err
	}
	p.suspended = p.suspended || susp
	d.Drop("spec.substrate.idleTimeout", "kars suspends a sandbox only when told (spec.suspended); there is no idle timer")
	d.Drop("spec.substrate.snapshot", "kars keeps state in the sandbox's workspace volume; substrate snapshots are not carried")
	hosts, err := d.Strings("spec.egress.allowedHosts")
	if err != nil {
		return err
	}
	for i, h := range hosts {
		if !hostname.MatchString(h) || len(h) > 253 {
			d.Drop(fmt.Sprintf("spec.egress.allowedHosts[%d]", i), fmt.Sprintf("%q is not a lowercase DNS name (optionally *.): kars allowlists hosts, not URLs or addresses", h))
			continue
		}
		if len(p.allowedHosts) == 64 {
			d.Drop(fmt.Sprintf("spec.egress.allowedHosts[%d]", i), "a KarsSandbox allowlists at most 64 hosts inline; put more in an allowlist artifact (networkPolicy.allowlistRef)")
			continue
		}
		p.allowedHosts = append(p.allowedHosts, karsv1.Hostname(h))
	}
	switch mode, err := d.String("spec.egress.mode"); {
	case err != nil:
		return err
	case mode == "" || mode == "DefaultDeny" || mode == "Deny":
	default:
		d.Drop("spec.egress.mode", fmt.Sprintf("egress mode %q: kars egress is always default-deny (Strict), with Learn to record requests for review", mode))
	}
	d.Drop("spec.egress.credentials", "per-host credential injection at kagent's gateway: kars brokers model credentials in the router (InferencePolicy) and MCP credentials per McpServer; other hosts get none")
	return nil
}
