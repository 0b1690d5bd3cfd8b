package controller

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
)

var _ Restarter = (*KubeSubstrate)(nil)

// Running implements Restarter: the UIDs of the sandbox's pods that are not
// being deleted.
func (k *KubeSubstrate) Running(ctx context.Context, sb *karsv1.KarsSandbox) ([]string, error) {
	pods, err := k.pods(ctx, sb)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, p := range pods {
		if p.DeletionTimestamp == nil {
			ids = append(ids, string(p.UID))
		}
	}
	return ids, nil
}

// Restart implements Restarter: it deletes the pods among ids, and the
// Deployment starts a new one (Recreate: the old pod is gone first, so two
// routers never share the state volume).
func (k *KubeSubstrate) Restart(ctx context.Context, sb *karsv1.KarsSandbox, ids []string) error {
	pods, err := k.pods(ctx, sb)
	if err != nil {
		return err
	}
	for i := range pods {
		p := &pods[i]
		if !slices.Contains(ids, string(p.UID)) || p.DeletionTimestamp != nil {
			continue
		}
		if err := k.c.Delete(ctx, p, client.Preconditions{UID: &p.UID}); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

// pods reads the sandbox's pods from the API server: the controller caches
// no pods (and may not watch them).
func (k *KubeSubstrate) pods(ctx context.Context, sb *karsv1.KarsSandbox) ([]corev1.Pod, error) {
	var pods corev1.PodList
	if err := k.apply.live.List(ctx, &pods, client.InNamespace(sb.Namespace), client.MatchingLabels(render.Selector(sb))); err != nil {
		return nil, fmt.Errorf("list pods of %s/%s: %w", sb.Namespace, sb.Name, err)
	}
	return pods.Items, nil
}
