package controller

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/egress/allowlist"
	"github.com/kars-io/kars/internal/egress/artifact"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// The egress tests' registry (go-containerregistry's, in process, with a
// blob store the test can tamper with and an outage switch) and keys.
var (
	egressReg   *httptest.Server
	egressBlobs = &tamperBlobs{m: map[string][]byte{}}
	egressDown  atomic.Bool
	signingKey  *ecdsa.PrivateKey
	otherKey    *ecdsa.PrivateKey
)

func egressTestSigners() *SignerPolicy {
	signingKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)), ggcrregistry.WithBlobHandler(egressBlobs))
	egressReg = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if egressDown.Load() {
			http.Error(w, "registry down", http.StatusServiceUnavailable)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	return &SignerPolicy{Keys: []*ecdsa.PublicKey{&signingKey.PublicKey}, PlainHTTP: []string{hostOf(egressReg)},
		Options: artifact.Options{HTTPClient: &http.Client{Timeout: 5 * time.Second}}}
}

type tamperBlobs struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (b *tamperBlobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.m[h.String()]
	if !ok {
		return 0, ggcrregistry.ErrNotFound
	}
	return int64(len(v)), nil
}

func (b *tamperBlobs) Get(_ context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.m[h.String()]
	if !ok {
		return nil, ggcrregistry.ErrNotFound
	}
	return io.NopCloser(bytes.NewReader(v)), nil
}

func (b *tamperBlobs) Put(_ context.Context, _ string, h v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	v, err := io.ReadAll(rc)
	b.mu.Lock()
	b.m[h.String()] = v
	b.mu.Unlock()
	return err
}

func serveEgressStatus(w http.ResponseWriter, st *routerconfig.EgressState) {
	type approval struct {
		Name      string    `json:"name"`
		UID       string    `json:"uid"`
		ExpiresAt time.Time `json:"expiresAt"`
		Active    bool      `json:"active"`
	}
	out := struct {
		Approvals []approval `json:"approvals"`
	}{Approvals: []approval{}}
	if st != nil {
		for _, a := range st.Approvals {
			out.Approvals = append(out.Approvals, approval{a.Name, a.UID, a.ExpiresAt, time.Now().Before(a.ExpiresAt)})
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func loadEgressState(t *testing.T, sb *karsv1.KarsSandbox, names render.Names) *routerconfig.EgressState {
	t.Helper()
	var cm corev1.ConfigMap
	get(t, sb.Namespace, names.RouterConfig, &cm)
	st, err := routerconfig.ParseEgressState([]byte(cm.Data[routerconfig.EgressStateFile]))
	if err != nil {
		t.Fatalf("the router refuses the rendered egress state: %v", err)
	}
	return st
}

// publish pushes an allowlist of hosts, signed with key (nil: unsigned),
// and returns its digest.
func publish(t *testing.T, repo string, key *ecdsa.PrivateKey, hosts ...string) string {
	t.Helper()
	var es []allowlist.Entry
	for _, h := range hosts {
		e, _ := allowlist.ParseEntry(h)
		es = append(es, e)
	}
	doc, _ := allowlist.NewDocument("", es)
	d, err := artifact.PushAllowlist(context.Background(), artifact.Options{PlainHTTP: true}, hostOf(egressReg), repo, "", doc.Marshal(), key)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func egressState(t *testing.T, sb *karsv1.KarsSandbox) *routerconfig.EgressState {
	names, _ := render.NamesFor(sb)
	return loadEgressState(t, sb, names)
}

func TestAllowlistVerifiedFailsClosed(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "egress-allowlist")
	signed := publish(t, "policy/allow", signingKey, "api.github.com:443", "*.githubusercontent.com")
	unsigned := publish(t, "policy/allow", nil, "unsigned.example.com")
	wrongKey := publish(t, "policy/allow", otherKey, "wrong.example.com")
	tampered := publish(t, "policy/allow", signingKey, "tampered.example.com")
	// Tamper with the last list's layer in storage, keeping its length.
	egressBlobs.mu.Lock()
	for d, b := range egressBlobs.m {
		if bytes.Contains(b, []byte("tampered.example.com")) && !bytes.Contains(b, []byte("docker-manifest-digest")) {
			egressBlobs.m[d] = bytes.Replace(b, []byte("tampered.example.com"), []byte("attacker.example.com"), 1)
		}
	}
	egressBlobs.mu.Unlock()

	for _, c := range []struct {
		name, digest, reason string
		ok                   bool
		hosts                int
	}{
		{"signed", signed, ReasonVerified, true, 2},
		{"unsigned", unsigned, string(artifact.ReasonUnsigned), false, 0},
		{"wrong-key", wrongKey, string(artifact.ReasonSignatureInvalid), false, 0},
		{"tampered", tampered, string(artifact.ReasonSignatureInvalid), false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			sb := minimalSandbox(ns, c.name, karsv1.RuntimeOpenClaw)
			sb.Spec.NetworkPolicy.AllowlistRef = &karsv1.OCIArtifactReference{Registry: hostOf(egressReg), Repository: "policy/allow",
				Digest: karsv1.Digest(c.digest), ArtifactType: allowlist.DocumentMediaType}
			withPolicies(t, sb)
			create(t, sb)
			status := metav1.ConditionFalse
			if c.ok {
				status = metav1.ConditionTrue
			}
			got := waitCondition(t, sb, ConditionAllowlistVerified, status, c.reason)
			waitRendered(t, sb)
			st := egressState(t, got)
			n := 0
			if st.Allowlist != nil {
				n = len(st.Allowlist.Hosts)
				if st.Allowlist.Digest != c.digest {
					t.Errorf("allowlist digest %s, want %s", st.Allowlist.Digest, c.digest)
				}
			}
			if n != c.hosts {
				t.Errorf("%d allowlisted hosts reached the router, want %d (%+v)", n, c.hosts, st.Allowlist)
			}
		})
	}

	// A registry outage: the verified list stays (verification is by
	// digest and cached), and a controller that restarts during the
	// outage keeps the list the router enforces, reporting StaleLKG.
	egressDown.Store(true)
	defer egressDown.Store(false)
	sb := &karsv1.KarsSandbox{}
	get(t, ns, "signed", sb)
	names, _ := render.NamesFor(sb)
	fresh := newEgressInputs(egressTestSignersKeepReg())
	in, cond, _, err := fresh.input(context.Background(), k8s, sb, names, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if cond == nil || cond.reason != ReasonStaleLKG || in.Allowlist == nil || len(in.Allowlist.Hosts) != 2 {
		t.Errorf("restarted controller during an outage: %+v %+v", cond, in.Allowlist)
	}
	// Without a verified list on record, an outage fails closed.
	sb2 := &karsv1.KarsSandbox{}
	get(t, ns, "unsigned", sb2)
	names2, _ := render.NamesFor(sb2)
	in, cond, _, _ = fresh.input(context.Background(), k8s, sb2, names2, time.Now())
	if cond == nil || cond.reason != string(artifact.ReasonFetchFailed) || in.Allowlist != nil {
		t.Errorf("outage without a last good list: %+v %+v", cond, in.Allowlist)
	}
}

// egressTestSignersKeepReg is the test's signer policy for a second
// egressInputs, without starting another registry.
func egressTestSignersKeepReg() *SignerPolicy {
	return &SignerPolicy{Keys: []*ecdsa.PublicKey{&signingKey.PublicKey}, PlainHTTP: []string{hostOf(egressReg)},
		Options: artifact.Options{HTTPClient: &http.Client{Timeout: 5 * time.Second}}}
}

func TestEgressApprovalPendingToActive(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "egress-approval")
	sb := minimalSandbox(ns, "bot", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	a := &karsv1.EgressApproval{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "github"},
		Spec: karsv1.EgressApprovalSpec{Sandbox: "bot", Hosts: []karsv1.Hostname{"api.github.com"}, Reason: "release automation",
			Ticket: "CHG-42", TTL: &metav1.Duration{Duration: time.Hour}}}
	create(t, a)
	// Rendered into the router's egress state with its expiry.
	eventually(t, 20*time.Second, "approval in egress.json", func() error {
		st := egressState(t, sb)
		if len(st.Approvals) != 1 || st.Approvals[0].Name != "github" || st.Approvals[0].Hosts[0] != "api.github.com" {
			return errorf("egress state %+v", st)
		}
		return nil
	})
	// No router yet: Pending.
	eventually(t, 20*time.Second, "Pending", func() error {
		get(t, ns, "github", a)
		if a.Status.Phase != PhasePending || a.Status.ExpiresAt == nil {
			return errorf("status %+v", a.Status)
		}
		return nil
	})
	if d := a.Status.ExpiresAt.Sub(a.CreationTimestamp.Time); d != time.Hour {
		t.Errorf("expiresAt is creation + %s, want 1h", d)
	}
	markDeploymentReady(t, sb)
	startRouter(t, sb)
	eventually(t, 30*time.Second, "Active, RouterConfirmed", func() error {
		get(t, ns, "github", a)
		for _, c := range a.Status.Conditions {
			if c.Type == ConditionRouterConfirmed && c.Status == metav1.ConditionTrue && a.Status.Phase == PhaseActive {
				return nil
			}
		}
		return errorf("status %+v", a.Status)
	})
	// An approval for a sandbox that does not exist is Invalid.
	bad := &karsv1.EgressApproval{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "orphan"},
		Spec: karsv1.EgressApprovalSpec{Sandbox: "nobody", Hosts: []karsv1.Hostname{"x.example.com"}, Reason: "test"}}
	create(t, bad)
	eventually(t, 20*time.Second, "Invalid", func() error {
		get(t, ns, "orphan", bad)
		if bad.Status.Phase != PhaseInvalid || !strings.Contains(conditionMessage(bad.Status.Conditions), "not found") {
			return errorf("status %+v", bad.Status)
		}
		return nil
	})
	_ = client.IgnoreNotFound(nil)
}

func conditionMessage(cs []metav1.Condition) string {
	for _, c := range cs {
		if c.Type == ConditionRouterConfirmed {
			return c.Message
		}
	}
	return ""
}
