package operator

import (
	"context"
	"fmt"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
)

// Actions are the changes the operator makes, each with the user's own
// credentials. The TUI asks for confirmation before calling any of them.
type Actions interface {
	// SetSuspended suspends (true) or resumes (false) a sandbox.
	SetSuspended(ctx context.Context, sandbox types.NamespacedName, suspended bool) error
	// DecideSRE approves ("Approved") or rejects ("Rejected") an SRE action.
	DecideSRE(ctx context.Context, action types.NamespacedName, state string) error
	// SetModel switches a sandbox's primary model, as `kars model set`
	// does; the router reloads it without a restart.
	SetModel(ctx context.Context, sandbox types.NamespacedName, model string) error
	// ApproveEgress grants a sandbox egress to host:port by creating an
	// EgressApproval (its default TTL, 24 h): creating one is the approval,
	// so RBAC on the kind decides who may approve (docs/egress.md).
	ApproveEgress(ctx context.Context, sandbox types.NamespacedName, host string, port int32, reason string) error
}

// KubeActions implements Actions on the API server.
type KubeActions struct {
	// Client writes with the user's credentials.
	Client client.Client
	// Clientset asks the API server who the user is (SelfSubjectReview):
	// a decision records that name, which the chart's admission policy
	// checks against the request's user.
	Clientset kubernetes.Interface
	// Now is the clock decisions are checked against; nil means time.Now.
	Now func() time.Time
}

// SetSuspended implements Actions.
func (k *KubeActions) SetSuspended(ctx context.Context, key types.NamespacedName, suspended bool) error {
	var sb karsv1.KarsSandbox
	if err := k.Client.Get(ctx, key, &sb); err != nil {
		return fmt.Errorf("read KarsSandbox %s: %w", key, err)
	}
	if sb.Spec.Suspended == suspended {
		return nil
	}
	before := sb.DeepCopy()
	sb.Spec.Suspended = suspended
	if err := k.Client.Patch(ctx, &sb, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("patch KarsSandbox %s: %w", key, err)
	}
	return nil
}

// SetModel implements Actions.
func (k *KubeActions) SetModel(ctx context.Context, key types.NamespacedName, model string) error {
	var sb karsv1.KarsSandbox
	if err := k.Client.Get(ctx, key, &sb); err != nil {
		return fmt.Errorf("read KarsSandbox %s: %w", key, err)
	}
	var ip karsv1.InferencePolicy
	ipKey := types.NamespacedName{Namespace: sb.Namespace, Name: sb.Spec.InferenceRef.Name}
	if err := k.Client.Get(ctx, ipKey, &ip); err != nil {
		return fmt.Errorf("read InferencePolicy %s: %w", ipKey, err)
	}
	before := ip.DeepCopy()
	p := &ip.Spec.ModelPreference.Primary
	if p.Provider == karsv1.ProviderOffline {
		return fmt.Errorf("sandbox %s uses the offline model, which has one model; set credentials with `kars credentials set %s` first", sb.Name, sb.Name)
	}
	p.Model = model
	if p.Provider == karsv1.ProviderAzureOpenAI {
		p.Deployment = model
	}
	if err := k.Client.Patch(ctx, &ip, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("patch InferencePolicy %s: %w", ipKey, err)
	}
	return nil
}

// ApproveEgress implements Actions.
func (k *KubeActions) ApproveEgress(ctx context.Context, key types.NamespacedName, host string, port int32, reason string) error {
	a := &karsv1.EgressApproval{
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, GenerateName: key.Name + "-"},
		Spec: karsv1.EgressApprovalSpec{Sandbox: key.Name, Hosts: []karsv1.Hostname{karsv1.Hostname(host)},
			Ports: []int32{port}, Reason: reason},
	}
	if err := k.Client.Create(ctx, a); err != nil {
		return fmt.Errorf("create an EgressApproval for %s: %w", key, err)
	}
	return nil
}

// DecideSRE implements Actions.
func (k *KubeActions) DecideSRE(ctx context.Context, key types.NamespacedName, state string) error {
	var a karsv1.KarsSREAction
	if err := k.Client.Get(ctx, key, &a); err != nil {
		return fmt.Errorf("read KarsSREAction %s: %w", key, err)
	}
	user, err := WhoAmI(ctx, k.Clientset)
	if err != nil {
		return err
	}
	now := time.Now
	if k.Now != nil {
		now = k.Now
	}
	return DecideSREAction(ctx, k.Client, &a, state, user, "decided in kars operator", now())
}

// WhoAmI asks the API server who the caller is (SelfSubjectReview), which
// is the name an approval must carry.
func WhoAmI(ctx context.Context, cs kubernetes.Interface) (string, error) {
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("ask the API server who you are (SelfSubjectReview): %w", err)
	}
	if r.Status.UserInfo.Username == "" {
		return "", fmt.Errorf("the API server did not say who you are")
	}
	return r.Status.UserInfo.Username, nil
}

// DecideSREAction records an approval or rejection by user on a, refusing
// what the controller would not run anyway: a decided, finished or expired
// action. The patch carries a's resourceVersion, so a decision made on a
// stale view fails instead of overwriting another.
func DecideSREAction(ctx context.Context, cl client.Client, a *karsv1.KarsSREAction, state, user, comment string, now time.Time) error {
	if s := a.Spec.Approval.State; s != "" && s != "Pending" {
		return fmt.Errorf("%s/%s was already %s by %s: decisions are final", a.Namespace, a.Name, strings.ToLower(s), a.Spec.Approval.DecidedBy)
	}
	if exp := controller.ExpiresAt(a); !now.Before(exp) || a.Status.Phase == controller.SREPhaseExpired {
		return fmt.Errorf("%s/%s expired at %s: propose it again if it is still needed", a.Namespace, a.Name, exp.Local().Format(time.RFC3339))
	}
	before := a.DeepCopy()
	a.Spec.Approval = karsv1.SREApproval{State: state, DecidedBy: user, Comment: comment}
	if err := cl.Patch(ctx, a, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("record the decision on %s/%s: %w", a.Namespace, a.Name, err)
	}
	return nil
}
