package up

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// ControllerCheck says where to look for a running controller.
type ControllerCheck struct {
	Namespace string
	// Deployment is the controller's Deployment name (kars-controller).
	Deployment string
	// LeaseID is its leader-election Lease.
	LeaseID string
	// InProcess reports whether a controller runs outside the cluster in a
	// process this machine knows of (the `kars dev` daemon); nil means no.
	InProcess func() bool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// errNotYet means the controller is not up yet; the message says why.
type errNotYet struct{ why string }

func (e errNotYet) Error() string { return e.why }

// ControllerUp reports whether a controller is reconciling, and how it knows:
//
//   - on a cluster with nodes, the Deployment has rolled out: every replica
//     updated to the current template and available;
//   - on a control plane without nodes (nothing can run the Deployment), a
//     controller running elsewhere holds the leader Lease and renewed it
//     within its lease duration;
//   - under `kars dev`, the dev daemon runs the controller in-process.
func (c ControllerCheck) ControllerUp(ctx context.Context, cl client.Client) (string, error) {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	if c.InProcess != nil && c.InProcess() {
		return "kars dev runs the controller in-process", nil
	}
	var nodes corev1.NodeList
	if err := cl.List(ctx, &nodes, client.Limit(1)); err != nil && !apierrors.IsForbidden(err) {
		return "", err
	}
	if len(nodes.Items) > 0 {
		var d appsv1.Deployment
		if err := cl.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: c.Deployment}, &d); err != nil {
			return "", err
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		s := d.Status
		if s.ObservedGeneration < d.Generation || s.UpdatedReplicas < want || s.AvailableReplicas < want || s.Replicas > want {
			return "", errNotYet{fmt.Sprintf("Deployment %s/%s: %d/%d updated, %d available", c.Namespace, c.Deployment, s.UpdatedReplicas, want, s.AvailableReplicas)}
		}
		return fmt.Sprintf("Deployment %s/%s rolled out: %d/%d available", c.Namespace, c.Deployment, s.AvailableReplicas, want), nil
	}
	var l coordinationv1.Lease
	if err := cl.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: c.LeaseID}, &l); err != nil {
		if apierrors.IsNotFound(err) {
			return "", errNotYet{fmt.Sprintf("the cluster has no nodes and no controller holds Lease %s/%s", c.Namespace, c.LeaseID)}
		}
		return "", err
	}
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || l.Spec.RenewTime == nil {
		return "", errNotYet{fmt.Sprintf("Lease %s/%s is not held", c.Namespace, c.LeaseID)}
	}
	dur := 15 * time.Second
	if l.Spec.LeaseDurationSeconds != nil {
		dur = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	age := now().Sub(l.Spec.RenewTime.Time)
	if age > dur {
		return "", errNotYet{fmt.Sprintf("Lease %s/%s held by %s was last renewed %s ago", c.Namespace, c.LeaseID, *l.Spec.HolderIdentity, age.Round(time.Second))}
	}
	return fmt.Sprintf("controller %s holds Lease %s/%s (the cluster has no nodes to run the Deployment)", *l.Spec.HolderIdentity, c.Namespace, c.LeaseID), nil
}

// WaitController waits until ControllerUp succeeds, printing a progress
// line whenever the reason for waiting changes.
func (c ControllerCheck) WaitController(ctx context.Context, cl client.Client, timeout time.Duration, out io.Writer) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		how, err := c.ControllerUp(ctx, cl)
		if err == nil {
			return how, nil
		}
		var nyet errNotYet
		if !errors.As(err, &nyet) && !apierrors.IsNotFound(err) {
			return "", err
		}
		if err.Error() != last {
			fmt.Fprintf(out, "  waiting: %v\n", err)
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no controller running after %s: %v; check `kubectl -n %s get deploy,pods,lease`", timeout, err, c.Namespace)
		case <-time.After(time.Second):
		}
	}
}

// WaitReconciled waits until a controller has written the sandbox's status
// for its current generation, and returns the sandbox as it then is.
func WaitReconciled(ctx context.Context, cl client.Client, key client.ObjectKey, timeout time.Duration) (*karsv1.KarsSandbox, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var sb karsv1.KarsSandbox
		err := cl.Get(ctx, key, &sb)
		if err == nil && sb.Status.ObservedGeneration >= sb.Generation && sb.Status.Phase != "" {
			return &sb, nil
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("sandbox %s not reconciled within %s: is the controller running? (`kars status %s`)", key, timeout, key.Name)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
