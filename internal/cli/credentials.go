package cli

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/devenv"
)

// Secret keys for channel tokens the router holds for the agent's channels.
const telegramTokenKey = "telegram-token"

func newCredentialsCmd(c *cluster) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "credentials",
		Short: "Give the router (never the agent) the credentials it brokers",
	}
	var cr devenv.Credentials
	var keyFile, telegram, telegramFile string
	var keyStdin, telegramStdin bool
	run := func(cmd *cobra.Command, args []string) error {
		if keyStdin && telegramStdin {
			return fmt.Errorf("only one secret can come from standard input: use a file for the other")
		}
		key, err := readSecretInput(keyFile, keyStdin, cmd.InOrStdin())
		if err != nil {
			return err
		}
		cr.APIKey = key
		if telegramFile != "" || telegramStdin {
			if telegram != "" {
				return fmt.Errorf("use one of --telegram-token, --telegram-token-file and --telegram-token-stdin")
			}
			if telegram, err = readSecretInput(telegramFile, telegramStdin, cmd.InOrStdin()); err != nil {
				return err
			}
		}
		if len(args) == 0 {
			if telegram != "" {
				return fmt.Errorf("a Telegram token belongs to one sandbox: name it (kars credentials update NAME --telegram-token-stdin)")
			}
			if cr.Provider == "" {
				return fmt.Errorf("--provider is required")
			}
			if _, err := devenv.DetectProviderFrom(cr); err != nil {
				return err
			}
			if err := devenv.SaveCredentials(cr); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "saved %s credentials to %s (mode 0600); new dev sandboxes use them\n", cr.Provider, devenv.CredentialsPath())
			return nil
		}
		return c.setSandboxCredentials(cmd, args[0], cr, telegram)
	}
	for _, use := range []string{"set", "update"} {
		sub := &cobra.Command{
			Use:   use + " [NAME]",
			Short: "Set inference or channel credentials for sandbox NAME, or for new dev sandboxes",
			Long: "Without NAME the credentials are saved for `kars dev` and `kars add` on this machine.\n" +
				"With NAME they go into the Secret NAME-credentials, mounted into that sandbox's router\n" +
				"only, and the sandbox's InferencePolicy is pointed at them. Pass keys with\n" +
				"--api-key-file or --api-key-stdin so they stay out of shell history.",
			Example: "  echo \"$OPENAI_API_KEY\" | kars credentials set --provider OpenAI --api-key-stdin\n" +
				"  kars credentials update research-bot --telegram-token-file ~/.telegram-token\n" +
				"  kars credentials update research-bot --telegram-token \"<bot-token>\"",
			Args: cobra.MaximumNArgs(1),
			RunE: run,
		}
		f := sub.Flags()
		f.StringVar((*string)(&cr.Provider), "provider", "", "OpenAI, AzureOpenAI, AzureAIFoundry, GitHubModels, Anthropic, OpenAICompatible or Offline")
		f.StringVar(&cr.Model, "model", "", "model name")
		f.StringVar(&cr.Endpoint, "endpoint", "", "endpoint URL (Azure, OpenAI-compatible)")
		f.StringVar(&cr.Deployment, "deployment", "", "Azure OpenAI deployment")
		f.StringVar(&cr.APIVersion, "api-version", "", "Azure OpenAI api-version")
		f.StringVar(&keyFile, "api-key-file", "", "read the API key from this file")
		f.BoolVar(&keyStdin, "api-key-stdin", false, "read the API key from standard input")
		f.StringVar(&telegram, "telegram-token", "", "Telegram bot token, bound to api.telegram.org for the agent's Telegram channel (the agent holds a placeholder)")
		f.StringVar(&telegramFile, "telegram-token-file", "", "read the Telegram bot token from this file")
		f.BoolVar(&telegramStdin, "telegram-token-stdin", false, "read the Telegram bot token from standard input")
		cmd.AddCommand(sub)
	}
	list := newCredentialsListCmd(c)
	cmd.AddCommand(list, newCredentialsDeleteCmd(c))
	// `kars credentials [NAME]` alone lists, as `list` does.
	cmd.Args, cmd.RunE = list.Args, list.RunE
	return cmd
}

func readSecretInput(file string, stdin bool, in io.Reader) (string, error) {
	switch {
	case file != "" && stdin:
		return "", fmt.Errorf("use either --api-key-file or --api-key-stdin")
	case file != "":
		raw, err := os.ReadFile(file)
		return strings.TrimSpace(string(raw)), err
	case stdin:
		raw, err := io.ReadAll(io.LimitReader(in, 64<<10))
		return strings.TrimSpace(string(raw)), err
	}
	return "", nil
}

// setSandboxCredentials stores keys in the sandbox's credentials Secret and
// points the InferencePolicy at them when a provider is given.
func (c *cluster) setSandboxCredentials(cmd *cobra.Command, name string, cr devenv.Credentials, telegram string) error {
	ctx := cmd.Context()
	cl, sb, err := c.sandbox(ctx, name)
	if err != nil {
		return err
	}
	data := map[string][]byte{}
	if cr.APIKey != "" {
		data[blueprint.APIKeyKey] = []byte(cr.APIKey)
	}
	if telegram != "" {
		data[telegramTokenKey] = []byte(telegram)
	}
	if len(data) == 0 && cr.Provider == "" {
		return fmt.Errorf("nothing to set: pass --provider with a key, or --telegram-token")
	}
	secName := blueprint.CredentialsSecretName(sb.Name)
	if len(data) > 0 {
		sec := &corev1.Secret{}
		err := cl.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: secName}, sec)
		switch {
		case apierrors.IsNotFound(err):
			sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secName, Namespace: sb.Namespace,
				Labels: map[string]string{"kars.io/sandbox": sb.Name}}, Type: corev1.SecretTypeOpaque, Data: data}
			err = cl.Create(ctx, sec)
		case err == nil:
			if sec.Data == nil {
				sec.Data = map[string][]byte{}
			}
			for k, v := range data {
				sec.Data[k] = v
			}
			err = cl.Update(ctx, sec)
		}
		if err != nil {
			return fmt.Errorf("store credentials in Secret %s/%s: %w", sb.Namespace, secName, err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "stored %d key(s) in Secret %s/%s (mounted into the router only)\n", len(data), sb.Namespace, secName)
	}
	if telegram != "" {
		if err := applyBinding(ctx, cl, telegramCredentialBinding(sb)); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "bound the Telegram token to %s: the agent holds a placeholder in %s, the router places the token\n",
			strings.Join(telegramEndpoints, " and "), telegramEnv)
	}
	if cr.Provider == "" {
		return nil
	}
	p, err := devenv.DetectProviderFrom(cr)
	if err != nil {
		return err
	}
	ip, err := inferencePolicyOf(ctx, cl, sb)
	if err != nil {
		return err
	}
	before := ip.DeepCopy()
	ip.Spec.ModelPreference.Primary = p.Target
	if cr.APIKey != "" {
		ip.Spec.ModelPreference.Primary.Auth = &karsv1.ProviderAuth{Mode: karsv1.AuthAPIKey,
			SecretRef: &karsv1.SecretKeyReference{Name: secName, Key: blueprint.APIKeyKey}}
	}
	if err := cl.Patch(ctx, ip, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("update InferencePolicy %s/%s: %w", ip.Namespace, ip.Name, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "InferencePolicy %s/%s now uses %s model %s\n", ip.Namespace, ip.Name, p.Target.Provider, p.Target.Model)
	return nil
}
