package render

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// ToolPolicyApplies reports whether tp's appliesTo admits sb. An empty
// appliesTo admits every sandbox that references the policy; otherwise the
// sandbox must be named in appliesTo.sandboxes or match appliesTo.selector.
func ToolPolicyApplies(tp *karsv1.ToolPolicy, sb *karsv1.KarsSandbox) (bool, error) {
	at := tp.Spec.AppliesTo
	if len(at.Sandboxes) == 0 && at.Selector == nil {
		return true, nil
	}
	if slices.Contains(at.Sandboxes, sb.Name) {
		return true, nil
	}
	if at.Selector == nil {
		return false, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(at.Selector)
	if err != nil {
		return false, err
	}
	return sel.Matches(labels.Set(sb.Labels)), nil
}
