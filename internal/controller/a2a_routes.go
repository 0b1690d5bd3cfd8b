package controller

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/a2a/routes"
	"github.com/kars-io/kars/internal/render"
)

// A2ARoutesReconciler keeps the installation-wide A2A objects equal to the
// sandboxes' exposures: the kars-a2a-gateway's routing table (one route per
// sandbox whose A2AExposed is True for its current generation, whose
// window is open and which is not being deleted), the gateway's client
// identity, and the ValidatingAdmissionPolicy that keeps every sandbox
// namespace off the internet except through the gateway. One reconciler
// writes the whole table from the list of sandboxes, so a disabled,
// expired or deleted sandbox drops out on the event that changes it.
type A2ARoutesReconciler struct {
	client client.Client
	apply  *applier
	env    render.Environment
	now    func() time.Time
}

// routesKey is the one request the reconciler handles.
var routesKey = func(ns string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: routes.ConfigMapName}}
}

// Names of the sandbox namespaces' admission policy.
const (
	SandboxEdgePolicy = "kars-sandbox-namespace-edge"
)

// setupA2ARoutes registers the reconciler.
func setupA2ARoutes(mgr ctrl.Manager, c client.Client, ap *applier, env render.Environment, now func() time.Time) error {
	r := &A2ARoutesReconciler{client: c, apply: ap, env: env, now: now}
	one := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{routesKey(env.SystemNamespace)}
	})
	ours := builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetNamespace() == env.SystemNamespace && o.GetName() == routes.ConfigMapName
	}))
	return ctrl.NewControllerManagedBy(mgr).
		Named("a2a-routes").
		Watches(&karsv1.KarsSandbox{}, one).
		Watches(&corev1.ConfigMap{}, one, ours).
		// Admin Secrets (a renewed router certificate) and the
		// gateway's identity.
		Watches(&corev1.Secret{}, one).
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		Complete(r)
}

// Reconcile implements reconcile.Reconciler.
func (r *A2ARoutesReconciler) Reconcile(ctx context.Context, _ ctrl.Request) (ctrl.Result, error) {
	now := r.now()
	if err := r.ensureGatewayIdentity(ctx, now); err != nil {
		return ctrl.Result{}, err
	}
	var list karsv1.KarsSandboxList
	if err := r.client.List(ctx, &list); err != nil {
		return ctrl.Result{}, err
	}
	table := &routes.Table{}
	var next time.Duration
	namespaces := map[string]bool{}
	for i := range list.Items {
		sb := &list.Items[i]
		namespaces[sb.Namespace] = true
		rt, err := r.route(ctx, sb, now)
		if err != nil {
			return ctrl.Result{}, err
		}
		if rt == nil {
			continue
		}
		table.Routes = append(table.Routes, *rt)
		next = minPositive(next, rt.ExpiresAt.Sub(now)+time.Millisecond)
	}
	data, err := routes.Marshal(table)
	if err != nil {
		return ctrl.Result{}, err
	}
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: routes.ConfigMapName, Namespace: r.env.SystemNamespace, Labels: a2aLabels()},
		Data:       map[string]string{routes.Key: string(data)},
	}
	if _, err := r.apply.apply(ctx, cm); err != nil {
		return ctrl.Result{}, fmt.Errorf("write the A2A routing table: %w", err)
	}
	if err := r.reconcileEdgePolicy(ctx, namespaces); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

func a2aLabels() map[string]string {
	return map[string]string{render.LabelManagedBy: render.ManagedBy, render.LabelComponent: "a2a-gateway"}
}

// route is sb's gateway route, or nil when sb is not exposed right now.
func (r *A2ARoutesReconciler) route(ctx context.Context, sb *karsv1.KarsSandbox, now time.Time) (*routes.Route, error) {
	a := sb.Spec.A2A
	c := meta.FindStatusCondition(sb.Status.Conditions, karsv1.ConditionA2AExposed)
	if !sb.DeletionTimestamp.IsZero() || !a.Enabled || a.ExpiresAt == nil || !now.Before(a.ExpiresAt.Time) ||
		c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != sb.Generation {
		return nil, nil
	}
	names, err := render.NamesFor(sb)
	if err != nil {
		return nil, nil
	}
	var admin corev1.Secret
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterAdmin}, &admin); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	if !ownedBy(&admin, sb) || len(admin.Data[render.AdminCertKey]) == 0 {
		return nil, nil
	}
	rt := &routes.Route{
		Sandbox: sb.Namespace + "/" + sb.Name, Router: names.RouterHostname + ":" + strconv.Itoa(int(render.RouterA2APort)),
		ServerName: names.RouterHostname, RouterCertPEM: string(admin.Data[render.AdminCertKey]),
		MinimumTrustScore: 500, BodyCapBytes: a.BodyCapBytes, AllowStreaming: a.AllowStreaming, ExpiresAt: a.ExpiresAt.UTC(),
	}
	if a.MinimumTrustScore != nil {
		rt.MinimumTrustScore = int(*a.MinimumTrustScore)
	}
	if rt.BodyCapBytes == 0 {
		rt.BodyCapBytes = 1 << 20
	}
	if rl := a.RateLimit; rl != nil {
		rt.RateLimit = routes.RateLimit{RPM: int(rl.RPM), Burst: int(rl.Burst)}
	}
	for _, c := range a.AllowedCallers {
		rt.Callers = append(rt.Callers, routes.Caller{Thumbprint: string(c.JWSThumbprint), DisplayName: c.DisplayName})
	}
	for _, s := range a.AdvertisedSkills {
		rt.Skills = append(rt.Skills, s.Name)
	}
	return rt, nil
}

// ensureGatewayIdentity creates the gateway's client certificate the first
// time: an Ed25519 key and a self-signed certificate (the routers pin the
// key, not a CA).
func (r *A2ARoutesReconciler) ensureGatewayIdentity(ctx context.Context, now time.Time) error {
	var s corev1.Secret
	err := r.client.Get(ctx, client.ObjectKey{Namespace: r.env.SystemNamespace, Name: GatewayMTLSSecret}, &s)
	if err == nil || !apierrors.IsNotFound(err) {
		return err
	}
	certPEM, keyPEM, err := newGatewayIdentity(now)
	if err != nil {
		return err
	}
	s = corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: GatewayMTLSSecret, Namespace: r.env.SystemNamespace, Labels: a2aLabels()},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	if err := r.client.Create(ctx, &s); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create the A2A gateway's client identity: %w", err)
	}
	return nil
}

// gatewayIdentityValidity is how long the gateway's client certificate is
// valid; the routers pin its key, and Go does not check the validity of a
// client certificate it pins rather than verifies.
const gatewayIdentityValidity = 10 * 365 * 24 * time.Hour

func newGatewayIdentity(now time.Time) (certPEM, keyPEM []byte, err error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "kars-a2a-gateway", Organization: []string{"kars"}},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(gatewayIdentityValidity),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// reconcileEdgePolicy keeps the admission policy that refuses, in every
// namespace holding a sandbox, the objects that would put a pod on the
// internet without the gateway: Ingresses, LoadBalancer and NodePort
// Services, and NetworkPolicy ingress rules from IP blocks. The policy is
// bound to the namespaces by name; without sandboxes the binding goes.
func (r *A2ARoutesReconciler) reconcileEdgePolicy(ctx context.Context, namespaces map[string]bool) error {
	vp, binding := edgePolicy(namespaces)
	if _, err := r.apply.apply(ctx, vp); err != nil {
		return fmt.Errorf("sandbox namespace admission policy: %w", err)
	}
	if binding == nil {
		var b admissionv1.ValidatingAdmissionPolicyBinding
		if err := r.client.Get(ctx, client.ObjectKey{Name: SandboxEdgePolicy}, &b); err != nil {
			return client.IgnoreNotFound(err)
		}
		return client.IgnoreNotFound(r.client.Delete(ctx, &b))
	}
	if _, err := r.apply.apply(ctx, binding); err != nil {
		return fmt.Errorf("sandbox namespace admission policy binding: %w", err)
	}
	return nil
}

// edgePolicy renders the policy and, when there are sandbox namespaces,
// its binding.
func edgePolicy(namespaces map[string]bool) (*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding) {
	ops := []admissionv1.OperationType{admissionv1.Create, admissionv1.Update}
	rule := func(group, resource string) admissionv1.NamedRuleWithOperations {
		return admissionv1.NamedRuleWithOperations{RuleWithOperations: admissionv1.RuleWithOperations{
			Operations: ops, Rule: admissionv1.Rule{APIGroups: []string{group}, APIVersions: []string{"*"}, Resources: []string{resource}}}}
	}
	fail := admissionv1.Fail
	vp := &admissionv1.ValidatingAdmissionPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: SandboxEdgePolicy, Labels: a2aLabels()},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{
				rule("networking.k8s.io", "ingresses"), rule("", "services"), rule("networking.k8s.io", "networkpolicies"),
			}},
			Validations: []admissionv1.Validation{
				{Expression: `request.resource.resource != "ingresses"`,
					Message: "Ingresses are not allowed in kars sandbox namespaces: the kars-a2a-gateway is the only public A2A endpoint (spec.a2a)"},
				{Expression: `request.resource.resource != "services" || !has(object.spec.type) || !(object.spec.type in ["LoadBalancer", "NodePort"])`,
					Message: "LoadBalancer and NodePort Services are not allowed in kars sandbox namespaces: the kars-a2a-gateway is the only public A2A endpoint (spec.a2a)"},
				{Expression: `request.resource.resource != "networkpolicies" || !has(object.spec.ingress) || object.spec.ingress.all(r, !has(r.from) || r.from.all(p, !has(p.ipBlock)))`,
					Message: "NetworkPolicy ingress rules from IP blocks are not allowed in kars sandbox namespaces: callers from outside come through the kars-a2a-gateway (spec.a2a)"},
			},
		},
	}
	var names []string
	for ns := range namespaces {
		names = append(names, ns)
	}
	if len(names) == 0 {
		return vp, nil
	}
	slices.Sort(names)
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicyBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: SandboxEdgePolicy, Labels: a2aLabels()},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        SandboxEdgePolicy,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpIn, Values: names,
			}}}},
		},
	}
	return vp, binding
}
