package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
)

// The Telegram binding `kars credentials update --telegram-token` makes:
// the Bot API takes the token in the path, https://api.telegram.org/bot<token>/METHOD
// (and /file/bot<token>/PATH for downloads), per core.telegram.org/bots/api
// "Making requests".
const (
	telegramBinding = "telegram"
	telegramEnv     = "TELEGRAM_BOT_TOKEN"
)

var telegramEndpoints = []string{"https://api.telegram.org/bot", "https://api.telegram.org/file/bot"}

// telegramCredentialBinding binds the sandbox's Telegram token (key
// telegramTokenKey of its credentials Secret) to the Bot API.
func telegramCredentialBinding(sb *karsv1.KarsSandbox) *karsv1.CredentialBinding {
	return &karsv1.CredentialBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: sb.Namespace, Name: telegramBinding, Labels: map[string]string{"kars.io/sandbox": sb.Name}},
		Spec: karsv1.CredentialBindingSpec{
			SandboxRef: karsv1.LocalObjectReference{Name: sb.Name},
			SecretRef:  karsv1.SecretKeyReference{Name: blueprint.CredentialsSecretName(sb.Name), Key: telegramTokenKey},
			Endpoints:  telegramEndpoints,
			Placement:  karsv1.CredentialPlacement{Type: karsv1.PlacementPath},
			AgentEnv:   telegramEnv,
		},
	}
}

// applyBinding creates want, or makes an existing binding of its name say
// what want says.
func applyBinding(ctx context.Context, cl client.Client, want *karsv1.CredentialBinding) error {
	got := &karsv1.CredentialBinding{}
	err := cl.Get(ctx, client.ObjectKeyFromObject(want), got)
	switch {
	case apierrors.IsNotFound(err):
		err = cl.Create(ctx, want)
	case err == nil:
		got.Spec = want.Spec
		err = cl.Update(ctx, got)
	}
	if err != nil {
		return fmt.Errorf("CredentialBinding %s/%s: %w", want.Namespace, want.Name, err)
	}
	return nil
}

func newCredentialsDeleteCmd(c *cluster) *cobra.Command {
	var telegram bool
	cmd := &cobra.Command{
		Use:   "delete NAME BINDING... | delete NAME --telegram",
		Short: "Revoke credentials of sandbox NAME: its router stops placing them at its next reload",
		Example: "  kars credentials delete research-bot --telegram\n" +
			"  kars credentials delete research-bot github",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			names := args[1:]
			if telegram {
				names = append(names, telegramBinding)
			}
			if len(names) == 0 {
				return fmt.Errorf("name the bindings to delete (kars credentials list %s), or pass --telegram", sb.Name)
			}
			for _, n := range names {
				cb := &karsv1.CredentialBinding{ObjectMeta: metav1.ObjectMeta{Namespace: sb.Namespace, Name: n}}
				if err := cl.Get(ctx, client.ObjectKeyFromObject(cb), cb); err != nil {
					return describeGetError(err, "CredentialBinding", sb.Namespace+"/"+n)
				}
				if cb.Spec.SandboxRef.Name != sb.Name {
					return fmt.Errorf("CredentialBinding %s/%s binds a credential for sandbox %s, not %s", sb.Namespace, n, cb.Spec.SandboxRef.Name, sb.Name)
				}
				if err := cl.Delete(ctx, cb); err != nil && !apierrors.IsNotFound(err) {
					return fmt.Errorf("delete CredentialBinding %s/%s: %w", sb.Namespace, n, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted CredentialBinding %s/%s: the router refuses its placeholder from its next reload\n", sb.Namespace, n)
			}
			if telegram {
				// The token itself goes too.
				if err := deleteSecretKey(ctx, cl, sb.Namespace, blueprint.CredentialsSecretName(sb.Name), telegramTokenKey); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&telegram, "telegram", false, "revoke the Telegram bot token (its binding and its key in NAME-credentials)")
	return cmd
}

func newCredentialsListCmd(c *cluster) *cobra.Command {
	return &cobra.Command{
		Use:   "list [NAME]",
		Short: "List credential bindings (names, endpoints and placements, never values)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var (
				cl   client.Client
				opts []client.ListOption
				err  error
				only string
			)
			if len(args) == 1 {
				var sb *karsv1.KarsSandbox
				if cl, sb, err = c.sandbox(ctx, args[0]); err != nil {
					return err
				}
				opts, only = append(opts, client.InNamespace(sb.Namespace)), sb.Name
			} else if cl, err = c.client(); err != nil {
				return err
			}
			var list karsv1.CredentialBindingList
			if err := cl.List(ctx, &list, opts...); err != nil {
				return fmt.Errorf("list CredentialBindings: %w", err)
			}
			return printBindings(cmd.OutOrStdout(), list.Items, only)
		},
	}
}

// printBindings writes one line per binding, of sandbox only when set.
func printBindings(w io.Writer, items []karsv1.CredentialBinding, only string) error {
	sort.Slice(items, func(i, j int) bool {
		a, b := items[i], items[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	var shown []karsv1.CredentialBinding
	for _, b := range items {
		if only == "" || b.Spec.SandboxRef.Name == only {
			shown = append(shown, b)
		}
	}
	if len(shown) == 0 {
		_, err := fmt.Fprintln(w, "no credential bindings")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SANDBOX\tBINDING\tPLACEMENT\tAGENT ENV\tENDPOINTS\tSTATUS")
	for _, b := range shown {
		place := string(b.Spec.Placement.Type)
		if b.Spec.Placement.Name != "" {
			place += " " + b.Spec.Placement.Name
		}
		status := "Pending"
		if c := meta.FindStatusCondition(b.Status.Conditions, karsv1.ConditionReady); c != nil {
			status = c.Reason
		}
		env := b.Spec.AgentEnv
		if env == "" {
			env = "-"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\n", b.Namespace, b.Spec.SandboxRef.Name, b.Name, place, env, strings.Join(b.Spec.Endpoints, ","), status)
	}
	return tw.Flush()
}

// deleteSecretKey removes key from a Secret, if both exist.
func deleteSecretKey(ctx context.Context, cl client.Client, ns, name, key string) error {
	sec := &corev1.Secret{}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, sec); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("read Secret %s/%s: %w", ns, name, err)
	}
	if _, ok := sec.Data[key]; !ok {
		return nil
	}
	delete(sec.Data, key)
	if err := cl.Update(ctx, sec); err != nil {
		return fmt.Errorf("remove %s from Secret %s/%s: %w", key, ns, name, err)
	}
	return nil
}
