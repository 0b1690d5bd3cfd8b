package controller

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// +kubebuilder:rbac:groups=cilium.io,resources=ciliumnetworkpolicies,verbs=get;list;watch;create;patch;delete

// A2AExposed condition reasons.
const (
	ReasonA2AExposed         = "Exposed"
	ReasonA2ADisabled        = "Disabled"
	ReasonA2AExpired         = "Expired"
	ReasonA2AExpiryTooFar    = "ExpiryTooFar"
	ReasonA2AGatewayMissing  = "GatewayNotConfigured"
	ReasonA2APending         = "Pending"
	ReasonA2ASandboxNotReady = "SandboxNotReady"
)

// GatewayMTLSSecret holds the kars-a2a-gateway's client certificate and
// key towards the routers, in the system namespace. The controller creates
// it; every exposed router pins its public key.
const GatewayMTLSSecret = "kars-a2a-gateway-mtls"

// a2aOutcome is what the controller decided about a sandbox's exposure.
type a2aOutcome struct {
	// goAhead: the exposure may be rendered (enabled, window open and at
	// most 30 days, gateway configured).
	goAhead bool
	reason  string
	message string
	// retry: the gateway's identity is not there yet; look again soon.
	retry bool
}

// a2aGoAhead decides whether sb may be exposed now. A window longer than
// 30 days is refused when the controller first sees it (this generation
// of the spec): the refusal sticks until the spec changes, so that waiting
// a day does not turn a refused window into an accepted one.
func (r *SandboxReconciler) a2aGoAhead(ctx context.Context, sb *karsv1.KarsSandbox, now time.Time) (*render.A2AInput, a2aOutcome) {
	a := sb.Spec.A2A
	switch {
	case !a.Enabled:
		return nil, a2aOutcome{reason: ReasonA2ADisabled, message: "spec.a2a.enabled is false: no A2A caller can reach this sandbox"}
	case a.ExpiresAt == nil:
		return nil, a2aOutcome{reason: ReasonA2AExpired, message: "spec.a2a.expiresAt is not set: exposure must end"}
	case !now.Before(a.ExpiresAt.Time):
		return nil, a2aOutcome{reason: ReasonA2AExpired, message: fmt.Sprintf("the exposure window ended at %s: set a new spec.a2a.expiresAt (at most 30 days ahead) to expose again", a.ExpiresAt.UTC().Format(time.RFC3339))}
	}
	if c := meta.FindStatusCondition(sb.Status.Conditions, karsv1.ConditionA2AExposed); c != nil &&
		c.Reason == ReasonA2AExpiryTooFar && c.ObservedGeneration == sb.Generation {
		return nil, a2aOutcome{reason: ReasonA2AExpiryTooFar, message: c.Message}
	}
	if a.ExpiresAt.Sub(now) > routerconfig.MaxA2AExposure {
		return nil, a2aOutcome{reason: ReasonA2AExpiryTooFar, message: fmt.Sprintf(
			"spec.a2a.expiresAt %s is %s ahead; exposure windows are capped at 30 days: set it to %s or earlier",
			a.ExpiresAt.UTC().Format(time.RFC3339), a.ExpiresAt.Sub(now).Round(time.Hour), now.Add(routerconfig.MaxA2AExposure).UTC().Format(time.RFC3339))}
	}
	if r.env.A2AGateway.PublicURL == "" {
		return nil, a2aOutcome{reason: ReasonA2AGatewayMissing, message: "this installation has no kars-a2a-gateway (its public URL is not configured): nothing can be exposed"}
	}
	pins, err := r.gatewayPins(ctx)
	if err != nil || len(pins) == 0 {
		msg := "the kars-a2a-gateway's client certificate (Secret " + r.env.SystemNamespace + "/" + GatewayMTLSSecret + ") does not exist yet"
		if err != nil {
			msg += ": " + err.Error()
		}
		return nil, a2aOutcome{reason: ReasonA2AGatewayMissing, message: msg, retry: true}
	}
	return &render.A2AInput{GatewayPins: pins}, a2aOutcome{goAhead: true}
}

// gatewayPins reads the gateway's client certificate and returns its SPKI
// pin.
func (r *SandboxReconciler) gatewayPins(ctx context.Context) ([]string, error) {
	var s corev1.Secret
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: r.env.SystemNamespace, Name: GatewayMTLSSecret}, &s); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	pin, err := spkiPin(s.Data[corev1.TLSCertKey])
	if err != nil {
		return nil, err
	}
	return []string{pin}, nil
}

// spkiPin is "sha256:<hex>" of a PEM certificate's SubjectPublicKeyInfo,
// as the router's ingress compares it.
func spkiPin(certPEM []byte) (string, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return "", fmt.Errorf("not a PEM certificate")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// a2aCondition sets A2AExposed from the exposure decision and what the
// reconcile saw of the workload.
func a2aCondition(st *karsv1.KarsSandboxStatus, sb *karsv1.KarsSandbox, o outcome, now time.Time) {
	status, reason, msg := metav1.ConditionFalse, o.a2a.reason, o.a2a.message
	switch {
	case !o.a2a.goAhead:
	case o.block != nil:
		reason, msg = ReasonA2ASandboxNotReady, "the sandbox does not run: "+o.block.message
	case !o.a2aRendered:
		reason, msg = ReasonA2ASandboxNotReady, "the exposure was not rendered"
	case !o.obs.Ready:
		reason, msg = ReasonA2APending, "waiting for the router to serve the A2A port"
	default:
		status, reason = metav1.ConditionTrue, ReasonA2AExposed
		msg = fmt.Sprintf("exposed to %d caller(s) through the kars-a2a-gateway at %s until %s",
			len(sb.Spec.A2A.AllowedCallers), render.A2APath(sb), sb.Spec.A2A.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if reason == "" {
		reason = ReasonA2ADisabled
	}
	c := metav1.Condition{Type: karsv1.ConditionA2AExposed, Status: status, Reason: reason, Message: msg, ObservedGeneration: sb.Generation}
	if old := meta.FindStatusCondition(st.Conditions, c.Type); old != nil && old.Status == status {
		c.LastTransitionTime = old.LastTransitionTime
	} else {
		c.LastTransitionTime = metav1.NewTime(now.Truncate(time.Second))
	}
	meta.SetStatusCondition(&st.Conditions, c)
	if status != metav1.ConditionTrue {
		st.A2AExpiresAt = nil
	}
}

// ciliumPolicyGVK is the CiliumNetworkPolicy kind.
var ciliumPolicyGVK = schema.GroupVersionKind{Group: "cilium.io", Version: "v2", Kind: "CiliumNetworkPolicy"}

// reconcileCiliumPolicy applies the sandbox's CiliumNetworkPolicy while it
// is exposed and removes it otherwise — when the cluster has the
// CiliumNetworkPolicy CRD; without it, there is nothing to do (the
// NetworkPolicy alone guards the port).
func (r *SandboxReconciler) reconcileCiliumPolicy(ctx context.Context, sb *karsv1.KarsSandbox, exposed bool) error {
	if _, err := r.client.RESTMapper().RESTMapping(ciliumPolicyGVK.GroupKind(), ciliumPolicyGVK.Version); err != nil {
		if meta.IsNoMatchError(err) {
			return nil
		}
		return err
	}
	want, err := render.CiliumNetworkPolicy(sb, r.env)
	if err != nil {
		return err
	}
	have := &unstructured.Unstructured{}
	have.SetGroupVersionKind(ciliumPolicyGVK)
	err = r.apiReader.Get(ctx, client.ObjectKeyFromObject(want), have)
	switch {
	case apierrors.IsNotFound(err):
		if !exposed {
			return nil
		}
	case err != nil:
		return err
	case !ownedAsRendered(want, have):
		return &ConflictError{Kind: ciliumPolicyGVK.Kind, Namespace: want.GetNamespace(), Name: want.GetName()}
	case !exposed:
		uid := have.GetUID()
		return client.IgnoreNotFound(r.client.Delete(ctx, have, client.Preconditions{UID: &uid}))
	}
	return r.client.Apply(ctx, client.ApplyConfigurationFromUnstructured(want), client.FieldOwner(render.ManagedBy), client.ForceOwnership)
}
