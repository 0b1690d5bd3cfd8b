package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/egress/credbind"
	"github.com/kars-io/kars/internal/testenv"
)

// TestTelegramBindingEndpointsParse: the endpoints the CLI binds are ones
// the router accepts, and the Bot API's paths fall under them.
func TestTelegramBindingEndpointsParse(t *testing.T) {
	for _, raw := range telegramEndpoints {
		e, err := credbind.ParseEndpoint(raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if e.Host != "api.telegram.org" || e.Port != 443 {
			t.Errorf("%s parsed as %+v", raw, e)
		}
	}
}

// TestCredentialsTelegramLifecycle runs the CLI against a real API
// server: a token from standard input is stored in the sandbox's Secret
// and bound to the Bot API; list shows the binding and never the value;
// delete --telegram removes the binding and the key.
func TestCredentialsTelegramLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an API server")
	}
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	const ns, name, token = "kars-bot", "bot", "7012345678:AAHcli-test-token_abcdefghijklm"
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: karsv1.KarsSandboxSpec{
		Runtime: karsv1.RuntimeSpec{Kind: karsv1.RuntimeOpenClaw}, InferenceRef: karsv1.LocalObjectReference{Name: "agent-inference"}}}); err != nil {
		t.Fatal(err)
	}
	kars := func(stdin string, args ...string) (string, error) {
		root := NewRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetIn(strings.NewReader(stdin))
		root.SetArgs(append(args, "--kubeconfig", env.Kubeconfig))
		err := root.ExecuteContext(ctx)
		return out.String(), err
	}

	if out, err := kars(token+"\n", "credentials", "update", name, "--telegram-token-stdin"); err != nil {
		t.Fatalf("update: %v\n%s", err, out)
	} else if strings.Contains(out, token) {
		t.Errorf("the CLI printed the token: %s", out)
	}
	var sec corev1.Secret
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name + "-credentials"}, &sec); err != nil {
		t.Fatal(err)
	}
	if string(sec.Data[telegramTokenKey]) != token {
		t.Fatalf("the Secret holds %q", sec.Data[telegramTokenKey])
	}
	var cb karsv1.CredentialBinding
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: telegramBinding}, &cb); err != nil {
		t.Fatal(err)
	}
	if cb.Spec.SandboxRef.Name != name || cb.Spec.SecretRef.Key != telegramTokenKey || cb.Spec.Placement.Type != karsv1.PlacementPath || cb.Spec.AgentEnv != telegramEnv {
		t.Errorf("binding %+v", cb.Spec)
	}
	// Again: the binding is updated in place, not duplicated.
	if out, err := kars("", "credentials", "update", name, "--telegram-token", token); err != nil {
		t.Fatalf("second update: %v\n%s", err, out)
	}
	out, err := kars("", "credentials", name)
	if err != nil || !strings.Contains(out, "kars-bot/bot") || !strings.Contains(out, "https://api.telegram.org/bot") || strings.Contains(out, token) {
		t.Errorf("list: %v\n%s", err, out)
	}
	// Both secrets from standard input cannot be told apart: refused.
	if _, err := kars("x\n", "credentials", "update", name, "--telegram-token-stdin", "--api-key-stdin"); err == nil {
		t.Error("two secrets from stdin accepted")
	}
	// A token without a sandbox is refused, not saved for dev.
	if _, err := kars("", "credentials", "update", "--telegram-token", token); err == nil {
		t.Error("a Telegram token without a sandbox accepted")
	}

	if out, err := kars("", "credentials", "delete", name, "--telegram"); err != nil {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: telegramBinding}, &cb); !apierrors.IsNotFound(err) {
		t.Errorf("the binding is still there: %v", err)
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name + "-credentials"}, &sec); err != nil {
		t.Fatal(err)
	}
	if _, ok := sec.Data[telegramTokenKey]; ok {
		t.Error("the token is still in the Secret")
	}
	if out, _ := kars("", "credentials", "list", name); !strings.Contains(out, "no credential bindings") {
		t.Errorf("list after delete: %s", out)
	}
	if _, err := kars("", "credentials", "delete", name, "nonesuch"); err == nil {
		t.Error("deleting an unknown binding succeeded")
	}
}
