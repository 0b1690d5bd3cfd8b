package blueprint

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/testenv"
)

var azure = karsv1.ModelTarget{Provider: karsv1.ProviderAzureOpenAI, Model: "gpt-4.1", Deployment: "gpt-4.1", Endpoint: "https://contoso.openai.azure.com"}

// Every runtime the CLI offers builds objects the real API server accepts.
func TestBuildEveryRuntimeIsAccepted(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	for cli, kind := range Runtimes {
		t.Run(cli, func(t *testing.T) {
			o := Options{Name: "a-" + strings.ReplaceAll(cli, "-", ""), Runtime: cli, Target: azure, Model: "gpt-4.1-mini",
				TokenBudgetDaily: 100000, Isolation: karsv1.IsolationEnhanced, APIKey: "sk-test"}
			if kind == karsv1.RuntimeBYO {
				o.BYOImage = "myacr.azurecr.io/my-agent:latest"
			}
			objs, err := Build(o)
			if err != nil {
				t.Fatal(err)
			}
			for _, obj := range objs {
				if err := env.Client.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
					t.Fatalf("API server rejected %T %s: %v", obj, obj.GetName(), err)
				}
			}
			sb := objs[len(objs)-1].(*karsv1.KarsSandbox)
			if sb.Spec.Runtime.Kind != kind || sb.Namespace != "kars-"+o.Name {
				t.Fatalf("sandbox = %s in %s, want %s in kars-%s", sb.Spec.Runtime.Kind, sb.Namespace, kind, o.Name)
			}
			ip := objs[2].(*karsv1.InferencePolicy)
			if ip.Spec.ModelPreference.Primary.Model != "gpt-4.1-mini" || ip.Spec.TokenBudget.Daily != 100000 {
				t.Fatalf("inference policy = %+v", ip.Spec)
			}
			// The key lives in a Secret; the sandbox spec never carries it.
			if s, ok := objs[1].(*corev1.Secret); !ok || string(s.Data[APIKeyKey]) != "sk-test" { // as stored by the server
				t.Fatalf("want the credentials Secret second, got %T", objs[1])
			}
		})
	}
}

func TestBuildRefusesBadInput(t *testing.T) {
	cases := []struct {
		o    Options
		want string
	}{
		{Options{Name: "Bad_Name", Target: azure}, "sandbox name"},
		{Options{Name: "x", Runtime: "crewai", Target: azure}, "unknown runtime"},
		{Options{Name: "x", Runtime: "byo", Target: azure}, "--byo-image"},
		{Options{Name: "x", Runtime: "openclaw", Target: azure, BYOImage: "a/b"}, "only for --runtime byo"},
		{Options{Name: "x"}, "no inference provider"},
	}
	for _, c := range cases {
		if _, err := Build(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Build(%+v) = %v, want an error saying %q", c.o, err, c.want)
		}
	}
}

// The offline model keeps its own model name whatever --model says.
func TestOfflineKeepsItsModel(t *testing.T) {
	objs, err := Build(Options{Name: "dev", Target: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}, Model: "gpt-4.1"})
	if err != nil {
		t.Fatal(err)
	}
	if m := objs[1].(*karsv1.InferencePolicy).Spec.ModelPreference.Primary.Model; m != "kars-offline" {
		t.Fatalf("offline model renamed to %q", m)
	}
}
