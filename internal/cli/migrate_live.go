package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/agentsandbox"
	"github.com/kars-io/kars/internal/overlay"
	"github.com/kars-io/kars/internal/render"
)

// pollEvery spaces the checks of the live switches.
var pollEvery = 250 * time.Millisecond

func newToOverlayCmd(c *cluster) *cobra.Command {
	var ref string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "to-overlay NAME --upstream-ref REF",
		Short: "Govern an upstream agent-sandbox Sandbox's pod instead of running kars's own",
		Long: "to-overlay switches a live sandbox to overlay mode: the upstream Sandbox REF (same namespace)\n" +
			"keeps owning its pod, and kars adds its router, egress guard and policies to that pod when it\n" +
			"is created. The switch never leaves the agent ungoverned: kars's own pod runs until the\n" +
			"overlaid one is governed and ready; a pod the upstream Sandbox started before the overlay is\n" +
			"replaced by suspending and resuming the Sandbox, so that the upstream controller recreates it\n" +
			"through the admission policy.",
		Example: "  kars migrate to-overlay my-agent --upstream-ref upstream-sandbox",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ref == "" {
				return fmt.Errorf("say which upstream Sandbox to govern with --upstream-ref NAME (in the sandbox's namespace)")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			return toOverlay(ctx, cl, sb, ref, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&ref, "upstream-ref", "", "the agents.x-k8s.io Sandbox, in the sandbox's namespace, whose pod kars governs")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for the overlay and the governed pod")
	return cmd
}

func toOverlay(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, ref string, out io.Writer) error {
	up, err := getSandbox(ctx, cl, sb.Namespace, ref)
	if err != nil {
		return err
	}
	if metav1.IsControlledBy(up, sb) {
		return fmt.Errorf("upstream Sandbox %s/%s is kars's translation of %s; overlay governs a Sandbox the upstream controller owns", sb.Namespace, ref, sb.Name)
	}
	if err := setMode(ctx, cl, sb, &karsv1.UpstreamCompatibility{SigsAgentSandbox: agentsandbox.ModeOverlay, UpstreamRef: &karsv1.LocalObjectReference{Name: ref}}); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: overlay mode on upstream Sandbox %s; kars keeps its own pod until the overlaid one is governed and ready\n", sb.Name, ref)

	// The policy is active once the API server admits a pod of the
	// Sandbox through it: ask with a server-side dry run.
	var digest string
	err = poll(ctx, "the overlay's admission policy to take effect", func() (bool, error) {
		d, err := probeOverlay(ctx, cl, up)
		digest = d
		return d != "", err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: admission policy %s active (digest %s)\n", sb.Name, overlay.Name(sb), digest)

	pod, err := podOf(ctx, cl, up)
	if err != nil {
		return err
	}
	mode, _, _ := unstructured.NestedString(up.Object, "spec", "operatingMode")
	switch {
	case pod != nil && pod.Annotations[overlay.AnnotationDigest] == digest:
		fmt.Fprintf(out, "%s: pod %s is already governed\n", sb.Name, pod.Name)
		return nil
	case pod != nil:
		// Started before the overlay: have the upstream controller
		// recreate it, through the policy.
		fmt.Fprintf(out, "%s: pod %s predates the overlay; suspending Sandbox %s so that it is recreated governed\n", sb.Name, pod.Name, ref)
		if err := setOperatingMode(ctx, cl, up, agentsandbox.OperatingSuspended); err != nil {
			return err
		}
		if err := poll(ctx, "the ungoverned pod "+pod.Name+" to go", func() (bool, error) {
			p, err := podOf(ctx, cl, up)
			return p == nil, err
		}); err != nil {
			return err
		}
	case mode == agentsandbox.OperatingSuspended:
		fmt.Fprintf(out, "%s: Sandbox %s was suspended; resuming it under the overlay\n", sb.Name, ref)
	}
	if err := setOperatingMode(ctx, cl, up, agentsandbox.OperatingRunning); err != nil {
		return err
	}
	var name string
	if err := poll(ctx, "the upstream controller to create the governed pod", func() (bool, error) {
		p, err := podOf(ctx, cl, up)
		if p != nil {
			name = p.Name
			if p.Annotations[overlay.AnnotationDigest] != digest {
				return false, fmt.Errorf("pod %s of Sandbox %s was created without the overlay's governance; is another admission controller rewriting it?", p.Name, ref)
			}
		}
		return p != nil, err
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: pod %s of Sandbox %s runs governed; kars stops its own pod once it is ready (watch `kars status %s`)\n", sb.Name, name, ref, sb.Name)
	return nil
}

func newToNativeCmd(c *cluster) *cobra.Command {
	var dryRun bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "to-native NAME",
		Short: "Return a sandbox to native mode: kars runs and owns its pod again",
		Long: "to-native switches a sandbox in translate, overlay or observe mode back to native: kars\n" +
			"starts its own pod, waits until it is ready, and only then suspends the upstream Sandbox it\n" +
			"overlaid or observed (a translated one the controller removes itself). The overlay's\n" +
			"admission policies stay until that Sandbox has stopped, so no ungoverned pod can start.",
		Example: "  kars migrate to-native my-agent --dry-run\n  kars migrate to-native my-agent",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			return toNative(ctx, cl, sb, dryRun, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the steps and change nothing")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for kars's own pod")
	return cmd
}

func toNative(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, dryRun bool, out io.Writer) error {
	mode, ref := agentsandbox.ModeOff, ""
	if uc := sb.Spec.UpstreamCompatibility; uc != nil {
		mode = uc.SigsAgentSandbox
		if uc.UpstreamRef != nil {
			ref = uc.UpstreamRef.Name
		}
	}
	if mode == "" || mode == agentsandbox.ModeOff {
		fmt.Fprintf(out, "%s is already native\n", sb.Name)
		return nil
	}
	names, err := render.NamesFor(sb)
	if err != nil {
		return err
	}
	steps := []string{
		fmt.Sprintf("set spec.upstreamCompatibility.sigsAgentSandbox of KarsSandbox %s/%s from %s to off", sb.Namespace, sb.Name, mode),
		fmt.Sprintf("wait until kars's Deployment %s/%s is ready", sb.Namespace, names.Workload),
	}
	switch mode {
	case agentsandbox.ModeTranslate:
		steps = append(steps, fmt.Sprintf("the controller then deletes its translated Sandbox %s/%s", sb.Namespace, sb.Name))
	case agentsandbox.ModeOverlay, agentsandbox.ModeObserve:
		if ref != "" {
			steps = append(steps, fmt.Sprintf("suspend upstream Sandbox %s/%s (operatingMode: Suspended) so that only kars's pod serves the agent", sb.Namespace, ref))
		}
		if mode == agentsandbox.ModeOverlay {
			steps = append(steps, fmt.Sprintf("the controller then removes admission policies %s", overlay.Name(sb)))
		}
	}
	if dryRun {
		fmt.Fprintf(out, "kars migrate to-native %s would:\n", sb.Name)
		for i, s := range steps {
			fmt.Fprintf(out, "  %d. %s\n", i+1, s)
		}
		return nil
	}
	if err := setMode(ctx, cl, sb, &karsv1.UpstreamCompatibility{SigsAgentSandbox: agentsandbox.ModeOff}); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: native mode; waiting for kars's own pod\n", sb.Name)
	key := types.NamespacedName{Namespace: sb.Namespace, Name: names.Workload}
	if err := poll(ctx, "kars's Deployment "+key.String()+" to be ready (the upstream Sandbox keeps serving, governed, meanwhile)", func() (bool, error) {
		var dep appsv1.Deployment
		if err := cl.Get(ctx, key, &dep); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return dep.Status.ObservedGeneration >= dep.Generation && dep.Status.AvailableReplicas >= 1, nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: kars's pod is ready\n", sb.Name)
	if mode == agentsandbox.ModeTranslate || ref == "" {
		return nil
	}
	up, err := getSandbox(ctx, cl, sb.Namespace, ref)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := setOperatingMode(ctx, cl, up, agentsandbox.OperatingSuspended); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: suspended upstream Sandbox %s; kars runs the agent alone\n", sb.Name, ref)
	return nil
}

// setMode sets the sandbox's upstreamCompatibility, re-reading it when
// the controller wrote to it in between (status, finalizers).
func setMode(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, uc *karsv1.UpstreamCompatibility) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := cl.Get(ctx, client.ObjectKeyFromObject(sb), sb); err != nil {
			return err
		}
		before := sb.DeepCopy()
		sb.Spec.UpstreamCompatibility = uc
		return cl.Patch(ctx, sb, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
	})
	if err != nil {
		return fmt.Errorf("set spec.upstreamCompatibility of KarsSandbox %s/%s to %s: %w", sb.Namespace, sb.Name, uc.SigsAgentSandbox, err)
	}
	return nil
}

func getSandbox(ctx context.Context, cl client.Client, ns, name string) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(agentsandbox.GroupVersionKind)
	if err := cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, err
		}
		return nil, fmt.Errorf("read upstream Sandbox %s/%s: %w", ns, name, err)
	}
	return u, nil
}

func setOperatingMode(ctx context.Context, cl client.Client, up *unstructured.Unstructured, mode string) error {
	patch := []byte(fmt.Sprintf(`{"spec":{"operatingMode":%q}}`, mode))
	if err := cl.Patch(ctx, up, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("set operatingMode %s on upstream Sandbox %s/%s: %w", mode, up.GetNamespace(), up.GetName(), err)
	}
	return nil
}

// podOf returns the live pod the upstream Sandbox controls, or nil.
func podOf(ctx context.Context, cl client.Client, up *unstructured.Unstructured) (*corev1.Pod, error) {
	var pods corev1.PodList
	if err := cl.List(ctx, &pods, client.InNamespace(up.GetNamespace())); err != nil {
		return nil, fmt.Errorf("list pods in %s: %w", up.GetNamespace(), err)
	}
	for i := range pods.Items {
		if metav1.IsControlledBy(&pods.Items[i], up) && pods.Items[i].DeletionTimestamp.IsZero() {
			return &pods.Items[i], nil
		}
	}
	return nil, nil
}

// probeOverlay asks the API server, with a dry run, to admit a pod of the
// upstream Sandbox, and returns the overlay digest the admission put on it
// ("" when no overlay applied yet).
func probeOverlay(ctx context.Context, cl client.Client, up *unstructured.Unstructured) (string, error) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "kars-overlay-probe-", Namespace: up.GetNamespace(),
			OwnerReferences: []metav1.OwnerReference{{APIVersion: up.GetAPIVersion(), Kind: up.GetKind(), Name: up.GetName(), UID: up.GetUID(), Controller: ptrTo(true)}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "probe", Image: "registry.k8s.io/pause:3.10"}}},
	}
	if err := cl.Create(ctx, pod, client.DryRunAll); err != nil {
		if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			return "", nil // a policy from before the switch, still settling
		}
		return "", fmt.Errorf("dry-run a pod of Sandbox %s: %w", up.GetName(), err)
	}
	return pod.Annotations[overlay.AnnotationDigest], nil
}

func ptrTo[T any](v T) *T { return &v }

// poll runs check until it reports done, fails, or ctx ends.
func poll(ctx context.Context, what string, check func() (bool, error)) error {
	for {
		done, err := check()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting for %s: %w", what, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}
