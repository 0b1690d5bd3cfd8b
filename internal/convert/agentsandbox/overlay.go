package agentsandbox

import (
	"fmt"
	"strings"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/convert/manifest"
)

// OverlayNotes say what an overlay enforces on the upstream pod, so that a
// user knows before switching what the admission policy will refuse.
var OverlayNotes = []string{
	"the upstream controller keeps owning the Sandbox and its pod; kars never adopts either",
	"pods of the Sandbox are admitted only with kars's governance added at creation (admission policy): the egress guard first, the router beside the agent, every other container as UID 1000 on a read-only root, no ServiceAccount token",
	"a pod whose containers read Secrets (env valueFrom secretKeyRef, envFrom secretRef) or mount Secret volumes is refused: credentials belong to the router",
	"a pod that existed before the overlay is ungoverned: `kars migrate to-overlay` suspends and resumes the Sandbox so the upstream controller recreates it through the policy",
}

// Overlay builds the KarsSandbox (with its dev-only policies) that governs
// the upstream Sandbox ref ("namespace/name", or "" for the only Sandbox of
// in) in overlay mode. The KarsSandbox has the Sandbox's name and namespace:
// overlay's upstreamRef is a same-namespace reference.
func Overlay(in []manifest.Object, ref string, o Options) (*Result, error) {
	var found []manifest.Object
	res := &Result{}
	for _, obj := range in {
		ok, err := isSandbox(obj)
		if err != nil {
			return nil, err
		}
		if !ok {
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s (%s): not an agent-sandbox Sandbox", obj.Ref(), obj.Source))
			continue
		}
		if ref == "" || ref == obj.GetNamespace()+"/"+obj.GetName() || (!strings.Contains(ref, "/") && ref == obj.GetName()) {
			found = append(found, obj)
		} else {
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s (%s): not the Sandbox named by --sandbox-ref %s", obj.Ref(), obj.Source, ref))
		}
	}
	switch {
	case len(found) == 0 && ref != "":
		return nil, fmt.Errorf("no Sandbox %s in the input", ref)
	case len(found) == 0:
		return nil, fmt.Errorf("no agents.x-k8s.io Sandbox in the input")
	case len(found) > 1:
		return nil, fmt.Errorf("the input holds %d Sandboxes; say which to overlay with --sandbox-ref NAMESPACE/NAME", len(found))
	}
	obj := found[0]
	if ns, _, ok := strings.Cut(ref, "/"); ok {
		obj.SetNamespace(ns)
	}
	d := lossy.New(obj.Ref(), obj.Object)
	sb, _, err := readSandbox(d, obj, o)
	if err != nil {
		return nil, &manifest.Error{Source: obj.Source, Err: err}
	}
	sb.Spec.UpstreamCompatibility = &karsv1.UpstreamCompatibility{
		SigsAgentSandbox: ModeOverlay,
		UpstreamRef:      &karsv1.LocalObjectReference{Name: obj.GetName()},
	}
	sb.Labels[LabelDevOnly] = "true"
	ip, tp := policies(sb)
	res.Objects = append(res.Objects, ip, tp, sb)
	res.Sandboxes = []*karsv1.KarsSandbox{sb}
	res.Notes = append(res.Notes, OverlayNotes...)
	return res, nil
}
