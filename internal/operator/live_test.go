package operator

import (
	"context"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/testenv"
)

// live is a model fed by Watch against a real API server; until applies
// watch messages to it until the frame satisfies ok.
type live struct {
	m    *Model
	msgs chan tea.Msg
}

func watchLive(t *testing.T, cfg *rest.Config, ns string, a Actions) *live {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	l := &live{m: New(Options{Renderer: plain(), Actions: a}), msgs: make(chan tea.Msg, 4096)}
	send(l.m, tea.WindowSizeMsg{Width: 140, Height: 40})
	if err := Watch(ctx, cfg, ns, func(msg tea.Msg) {
		select {
		case l.msgs <- msg:
		case <-ctx.Done():
		}
	}); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *live) until(t *testing.T, what string, ok func(frame string) bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(20 * time.Second)
	for {
		if ok(l.m.View()) {
			return time.Since(start)
		}
		select {
		case msg := <-l.msgs:
			if e, isErr := msg.(ErrMsg); isErr {
				t.Fatalf("watch: %v", e.Err)
			}
			send(l.m, msg)
		case <-deadline:
			t.Fatalf("%s: not shown within 20 s; frame:\n%s", what, l.m.View())
		}
	}
}

// The operator against the real API server: objects appear from watches,
// and its actions change them with the user's own credentials.
func TestLive(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	cl := env.Client
	cs := kubernetes.NewForConfigOrDie(env.Config)
	acts := &KubeActions{Client: cl, Clientset: cs}
	l := watchLive(t, env.Config, "", acts)
	l.until(t, "sync", func(f string) bool { return strings.Contains(f, "· live") })

	objs, err := blueprint.Build(blueprint.Options{Name: "bot", Target: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}})
	if err != nil {
		t.Fatal(err)
	}
	var created time.Time
	for _, o := range objs {
		if _, isSandbox := o.(*karsv1.KarsSandbox); isSandbox {
			created = time.Now()
		}
		if err := cl.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	// Created with a client (as kubectl would), shown from the watch.
	l.until(t, "the new sandbox", func(f string) bool { return strings.Contains(f, "› kars-bot/bot") })
	t.Logf("sandbox create request sent → in the frame: %v", time.Since(created))

	a := &karsv1.KarsSREAction{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "suspend-bot"}, Spec: karsv1.KarsSREActionSpec{
		Action: karsv1.SRESuspendSandbox, Target: karsv1.SREActionTarget{Kind: "KarsSandbox", Name: "bot"}, Reason: "spend doubled",
		ProposedBy: "sre-agent", Approval: karsv1.SREApproval{State: "Pending"}}}
	if err := cl.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	l.until(t, "the proposal", func(f string) bool { return strings.Contains(f, "Pending  suspend-bot") })

	// Approve from the keyboard: the API server records the caller's own
	// name, and the watch brings the decision back.
	send(l.m, key("tab"))
	send(l.m, key("a"))
	send(l.m, key("y"))
	if !strings.Contains(l.m.View(), "done: approve kars-bot/suspend-bot") {
		t.Fatalf("approval failed:\n%s", l.m.View())
	}
	var got karsv1.KarsSREAction
	if err := cl.Get(ctx, client.ObjectKeyFromObject(a), &got); err != nil {
		t.Fatal(err)
	}
	me, err := WhoAmI(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.Approval.State != "Approved" || got.Spec.Approval.DecidedBy != me || me == "" {
		t.Fatalf("approval %+v", got.Spec.Approval)
	}
	l.until(t, "the decision", func(f string) bool { return strings.Contains(f, "Approved suspend-bot") })

	// Suspend from the keyboard, seen in the sandbox's spec and the frame.
	send(l.m, key("tab"))
	send(l.m, key("s"))
	send(l.m, key("y"))
	var sb karsv1.KarsSandbox
	if err := cl.Get(ctx, types.NamespacedName{Namespace: "kars-bot", Name: "bot"}, &sb); err != nil || !sb.Spec.Suspended {
		t.Fatalf("suspended=%v err=%v\n%s", sb.Spec.Suspended, err, l.m.View())
	}
	l.until(t, "suspended", func(f string) bool { return strings.Contains(f, "· suspended") })

	// Switching the model: refused for the offline model, done for a
	// provider's, and the watch brings the new model back.
	typeModel := func(model string) {
		send(l.m, key("m"))
		send(l.m, key(model))
		send(l.m, tea.KeyMsg{Type: tea.KeyEnter})
		send(l.m, key("y"))
	}
	typeModel("gpt-4.1-mini")
	if f := l.m.View(); !strings.Contains(f, "failed: switch kars-bot/bot to gpt-4.1-mini: sandbox bot uses the offline model") {
		t.Fatalf("offline switch:\n%s", f)
	}
	objs, err = blueprint.Build(blueprint.Options{Name: "writer", Target: karsv1.ModelTarget{Provider: karsv1.ProviderOpenAI, Model: "gpt-4.1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := cl.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	l.until(t, "the second sandbox", func(f string) bool { return strings.Contains(f, "kars-writer/writer") })
	send(l.m, key("down"))
	typeModel("gpt-4.1-mini")
	var ip karsv1.InferencePolicy
	if err := cl.Get(ctx, types.NamespacedName{Namespace: "kars-writer", Name: "writer-inference"}, &ip); err != nil {
		t.Fatal(err)
	}
	if ip.Spec.ModelPreference.Primary.Model != "gpt-4.1-mini" {
		t.Fatalf("primary %+v\n%s", ip.Spec.ModelPreference.Primary, l.m.View())
	}
	l.until(t, "the new model", func(f string) bool { return strings.Contains(f, "model gpt-4.1-mini") })
	send(l.m, key("up"))

	// Deleted, gone from the frame.
	if err := cl.Delete(ctx, &sb); err != nil {
		t.Fatal(err)
	}
	l.until(t, "deletion", func(f string) bool { return !strings.Contains(f, "kars-bot/bot") && strings.Contains(f, "1 sandboxes") })
}

// A user who may only read sandboxes in one namespace sees them, is told
// what is not watched, and cannot change anything: their RBAC, not the
// operator, decides.
func TestLiveWithTheUsersRBAC(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	cl := env.Client
	ns := "team-a"
	mustCreate := func(objs ...client.Object) {
		t.Helper()
		for _, o := range objs {
			if err := cl.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	mustCreate(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sandbox-reader"}, Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"kars.azure.com"}, Resources: []string{"karssandboxes"}, Verbs: []string{"get", "list", "watch"}}}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bob"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "sandbox-reader"},
			Subjects: []rbacv1.Subject{{Kind: "User", Name: "bob", APIGroup: "rbac.authorization.k8s.io"}}})
	objs, err := blueprint.Build(blueprint.Options{Name: "bot", Namespace: ns, Target: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if _, isNS := o.(*corev1.Namespace); !isNS {
			mustCreate(o)
		}
	}

	bob := rest.CopyConfig(env.Config)
	bob.Impersonate = rest.ImpersonationConfig{UserName: "bob"}
	bobClient, err := client.New(bob, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	l := watchLive(t, bob, ns, &KubeActions{Client: bobClient, Clientset: kubernetes.NewForConfigOrDie(bob)})
	l.until(t, "bob's view", func(f string) bool {
		return strings.Contains(f, "team-a/bot") && strings.Contains(f, "· live") && strings.Contains(f, "not watched: you may not list KarsSREAction")
	})
	if f := l.m.View(); !strings.Contains(f, "not watched: you may not list Event") || !strings.Contains(f, "not watched: you may not list EgressApproval") {
		t.Fatalf("frame:\n%s", f)
	}
	send(l.m, key("s"))
	send(l.m, key("y"))
	if f := l.m.View(); !strings.Contains(f, "failed: suspend team-a/bot") || !strings.Contains(f, "forbidden") {
		t.Fatalf("bob suspended a sandbox he may only read:\n%s", f)
	}
	var sb karsv1.KarsSandbox
	if err := cl.Get(ctx, types.NamespacedName{Namespace: ns, Name: "bot"}, &sb); err != nil || sb.Spec.Suspended {
		t.Fatalf("suspended=%v err=%v", sb.Spec.Suspended, err)
	}
}
