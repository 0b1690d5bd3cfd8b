package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/pairing"
	pairingapi "github.com/kars-io/kars/internal/pairing/apiserver"
	"github.com/kars-io/kars/internal/render"
)

// offloadBrokerDID reads the offload broker's identity, which the
// controller publishes once its broker is open (--offload-state).
func offloadBrokerDID(ctx context.Context, cl client.Client, systemNS string) (string, error) {
	cm := &corev1.ConfigMap{}
	err := cl.Get(ctx, client.ObjectKey{Namespace: systemNS, Name: controller.OffloadIdentityName}, cm)
	if err == nil && cm.Data[controller.OffloadDIDKey] != "" {
		return cm.Data[controller.OffloadDIDKey], nil
	}
	if err == nil || apierrors.IsNotFound(err) {
		return "", fmt.Errorf("the offload broker has not published its identity (ConfigMap %s/%s): run kars-controller with --offload-state, or pass --sandbox for a kars <-> kars pairing", systemNS, controller.OffloadIdentityName)
	}
	return "", err
}

// parseLifetime reads "90d", "12h", "30m" (a Go duration or whole days).
func parseLifetime(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 || n > 3650 {
			return 0, fmt.Errorf("--expires %q: want a number of days from 1 to 3650, e.g. 90d", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--expires %q: want a positive duration such as 90d, 12h or 30m", s)
	}
	return d, nil
}

func capabilities(s []string) ([]karsv1.PairingCapability, error) {
	var out []karsv1.PairingCapability
	for _, c := range s {
		switch c = strings.TrimSpace(c); c {
		case "offload", "handoff":
			out = append(out, karsv1.PairingCapability(c))
		default:
			return nil, fmt.Errorf("capability %q: kars grants offload and handoff", c)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("at least one capability (offload, handoff) is required")
	}
	return out, nil
}

func newPairCmd(c *cluster) *cobra.Command {
	var expires string
	var caps []string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "pair A B",
		Short: "Pair two sandboxes for end-to-end encrypted messaging, or manage pairing tokens",
		Long: "pair A B lets the agents of sandboxes A and B message each other over the mesh: it creates\n" +
			"a KarsPairing in each sandbox's namespace (A's named B, B's named A: the name is how each\n" +
			"agent addresses the other, as @B and @A), and waits until the controller has configured\n" +
			"both routers. Every message is still decided by each side's policy (mesh:send:<peer>,\n" +
			"mesh:receive:<peer>) and gated by trust. See also `kars pair generate` for peers outside\n" +
			"this cluster, `kars pair revoke`, `kars pair list`.",
		Example: "  kars pair planner worker\n  kars pair planner worker --expires 7d",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			lifetime, err := parseLifetime(expires)
			if err != nil {
				return err
			}
			cs, err := capabilities(caps)
			if err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			a, err := c.findSandbox(ctx, cl, args[0])
			if err != nil {
				return err
			}
			b, err := c.findSandbox(ctx, cl, args[1])
			if err != nil {
				return err
			}
			if a.UID == b.UID {
				return fmt.Errorf("a sandbox cannot be paired with itself")
			}
			exp := metav1.NewTime(time.Now().Add(lifetime).UTC().Truncate(time.Second))
			group := a.Name + "-" + b.Name
			out := cmd.OutOrStdout()
			for _, side := range [][2]*karsv1.KarsSandbox{{a, b}, {b, a}} {
				self, peer := side[0], side[1]
				kp, err := ensureSandboxPairing(ctx, cl, self, peer, group, exp, cs)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "KarsPairing %s/%s: %s may message %s (as @%s) until %s\n", kp.Namespace, kp.Name, self.Name, peer.Name, kp.Name, exp.Format(time.RFC3339))
			}
			if wait <= 0 {
				return nil
			}
			start := time.Now()
			for _, k := range []client.ObjectKey{{Namespace: a.Namespace, Name: b.Name}, {Namespace: b.Namespace, Name: a.Name}} {
				if err := waitPairingReady(ctx, cl, k, wait); err != nil {
					return err
				}
			}
			fmt.Fprintf(out, "paired: both routers enforce the pairing (%s)\n", time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVar(&expires, "expires", "90d", "how long the pairing lasts (pairings always expire)")
	cmd.Flags().StringSliceVar(&caps, "capabilities", []string{"handoff"}, "capabilities granted: handoff, offload")
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "wait this long for both routers to enforce the pairing (0: do not wait)")
	cmd.AddCommand(newPairGenerateCmd(c), newPairRevokeCmd(c), newPairListCmd(c))
	return cmd
}

// ensureSandboxPairing creates self's KarsPairing with peer, named for
// the peer, or accepts the one that already pairs them.
func ensureSandboxPairing(ctx context.Context, cl client.Client, self, peer *karsv1.KarsSandbox, group string, exp metav1.Time, caps []karsv1.PairingCapability) (*karsv1.KarsPairing, error) {
	// A sandbox pairing has no token, but the schema wants a hash: the
	// hash of 32 random bytes nobody keeps can never be redeemed.
	var never [32]byte
	rand.Read(never[:])
	kp := &karsv1.KarsPairing{
		ObjectMeta: metav1.ObjectMeta{Namespace: self.Namespace, Name: peer.Name, Labels: map[string]string{controller.LabelPairing: group}},
		Spec: karsv1.KarsPairingSpec{
			TokenHash: karsv1.Digest(pairing.Hash(hex.EncodeToString(never[:]))), DisplayName: peer.Name, ExpiresAt: exp,
			Capabilities: caps, SandboxRef: &karsv1.LocalObjectReference{Name: self.Name}, PeerSandbox: peer.Namespace + "/" + peer.Name,
		},
	}
	err := cl.Create(ctx, kp)
	if err == nil {
		return kp, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, describeGetError(err, "KarsPairing", self.Namespace+"/"+peer.Name)
	}
	cur := &karsv1.KarsPairing{}
	if err := cl.Get(ctx, client.ObjectKeyFromObject(kp), cur); err != nil {
		return nil, err
	}
	switch {
	case cur.Spec.PeerSandbox != kp.Spec.PeerSandbox || cur.Spec.SandboxRef == nil || cur.Spec.SandboxRef.Name != self.Name:
		return nil, fmt.Errorf("KarsPairing %s/%s already exists and pairs something else; delete it or pair under another name", cur.Namespace, cur.Name)
	case cur.Spec.Revoked:
		return nil, fmt.Errorf("KarsPairing %s/%s was revoked, and revocation is final: delete it (kubectl delete karspairing -n %s %s) to pair again", cur.Namespace, cur.Name, cur.Namespace, cur.Name)
	}
	return cur, nil
}

// waitPairingReady waits until the controller reports the pairing
// enforced by its router.
func waitPairingReady(ctx context.Context, cl client.Client, key client.ObjectKey, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		kp := &karsv1.KarsPairing{}
		err := cl.Get(ctx, key, kp)
		if err == nil {
			c := meta.FindStatusCondition(kp.Status.Conditions, karsv1.ConditionReady)
			if kp.Status.Phase == karsv1.PairingActive && c != nil && c.Status == metav1.ConditionTrue {
				return nil
			}
			if time.Now().After(deadline) {
				msg := "no status yet"
				if c != nil {
					msg = c.Reason + ": " + c.Message
				}
				return fmt.Errorf("KarsPairing %s is %q after %s (%s); check `kars status` of both sandboxes", key, kp.Status.Phase, within, msg)
			}
		} else if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func newPairGenerateCmd(c *cluster) *cobra.Command {
	var name, expires, sandbox, registry, relay, systemNS string
	var slots int
	var caps []string
	var budget, perOffload int64
	var offloadInference, offloadTTL string
	cmd := &cobra.Command{
		Use:   "generate --name NAME",
		Short: "Mint a one-time pairing token for a peer outside this cluster",
		Long: "generate mints a signed, one-time pairing token and records only its hash in a new\n" +
			"KarsPairing. Give the token to the peer over a secure channel: it redeems it once\n" +
			"(`kars mesh auth`, or the kars-mesh plugin's kars_pair), binding the pairing to its\n" +
			"mesh identity. The token is printed once and never stored.",
		Example: "  kars pair generate --name alice-laptop --slots 3 --expires 90d --capabilities offload,handoff\n" +
			"  kars pair generate --name cluster-b-worker --sandbox planner --slots 5 --expires 30d",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if name == "" {
				return fmt.Errorf("--name is required: it names the pairing and is how your agent addresses the peer")
			}
			lifetime, err := parseLifetime(expires)
			if err != nil {
				return err
			}
			cs, err := capabilities(caps)
			if err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			key, err := pairingapi.LoadKey(ctx, cl, systemNS)
			if err != nil {
				return fmt.Errorf("reading the cluster's pairing key (Secret %s/%s, created by the controller when the mesh is on): %w", systemNS, pairingapi.KeyName, err)
			}
			_, dev := c.kubeconfigPath()
			if registry == "" || relay == "" {
				def := render.ClusterMesh(systemNS)
				if dev {
					def = devenv.MeshEndpoints()
				}
				registry, relay = or(registry, def.Registry), or(relay, def.Relay)
			}
			p := pairing.Payload{Name: name, Registry: registry, Relay: relay, Slots: slots,
				Exp: time.Now().Add(lifetime).Unix(), TokenBudget: budget}
			for _, x := range cs {
				p.Capabilities = append(p.Capabilities, string(x))
			}
			ns := c.namespace
			var ref *karsv1.LocalObjectReference
			if sandbox != "" {
				sb, err := c.findSandbox(ctx, cl, sandbox)
				if err != nil {
					return err
				}
				ns, ref = sb.Namespace, &karsv1.LocalObjectReference{Name: sb.Name}
				p.Sandbox = sb.Namespace + "/" + sb.Name
				st, err := c.routerMesh(ctx, cl, sb)
				if err != nil {
					return fmt.Errorf("reading %s's mesh identity from its router: %w", sb.Name, err)
				}
				p.Issuer = st.DID
			}
			if ns == "" {
				ns = systemNS
			}
			var tmpl *karsv1.OffloadTemplate
			if sandbox == "" {
				// An offload pairing: the host talks to the cluster's
				// offload broker, whose identity the token names.
				if p.Issuer, err = offloadBrokerDID(ctx, cl, systemNS); err != nil {
					return err
				}
				if offloadInference != "" {
					tmpl = &karsv1.OffloadTemplate{InferenceRef: karsv1.LocalObjectReference{Name: offloadInference}}
					if offloadTTL != "" {
						d, err := time.ParseDuration(offloadTTL)
						if err != nil || d < time.Minute || d > 24*time.Hour {
							return fmt.Errorf("--offload-ttl %q: want a duration from 1m to 24h", offloadTTL)
						}
						tmpl.TTLSeconds = int32(d / time.Second)
					}
				}
			} else if offloadInference != "" || perOffload > 0 {
				return fmt.Errorf("--offload-inference and --tokens-per-offload shape offload pairings; a pairing with --sandbox creates no offload sandboxes")
			}
			tok, err := pairing.Mint(rand.Reader, key, p)
			if err != nil {
				return err
			}
			h := pairing.Hash(tok)
			kp := &karsv1.KarsPairing{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{pairing.LabelTokenHash: pairing.HashLabel(h)}},
				Spec: karsv1.KarsPairingSpec{TokenHash: karsv1.Digest(h), DisplayName: name, Slots: int32(slots),
					ExpiresAt: metav1.NewTime(time.Unix(p.Exp, 0).UTC()), Capabilities: cs, SandboxRef: ref, Offload: tmpl},
			}
			if budget > 0 || perOffload > 0 {
				kp.Spec.TokenBudget = &karsv1.TokenBudget{Daily: budget, PerRequest: perOffload}
			}
			if err := cl.Create(ctx, kp); err != nil {
				return describeGetError(err, "KarsPairing", ns+"/"+name)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(cmd.ErrOrStderr(), "KarsPairing %s/%s created (PendingPairing until redeemed, expires %s).\n"+
				"This token is shown once; give it to the peer over a secure channel:\n\n", ns, name, kp.Spec.ExpiresAt.Format(time.RFC3339))
			fmt.Fprintln(out, tok)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "name of the pairing (and of the peer, as the agent addresses it)")
	f.IntVar(&slots, "slots", 1, "concurrent offload sandboxes the peer may hold (1-100)")
	f.StringVar(&expires, "expires", "30d", "how long the token and the pairing last")
	f.StringSliceVar(&caps, "capabilities", []string{"handoff"}, "capabilities granted: offload, handoff")
	f.Int64Var(&budget, "token-budget", 0, "daily inference tokens spent for the peer (0: the sandbox's own budget only)")
	f.StringVar(&sandbox, "sandbox", "", "pair the peer with this sandbox (kars <-> kars); without it, an offload pairing")
	f.StringVar(&offloadInference, "offload-inference", "", "offload pairing: the InferencePolicy (in the pairing's namespace) offload sandboxes use; without it offload requests are refused until spec.offload is set")
	f.StringVar(&offloadTTL, "offload-ttl", "", "offload pairing: how long an offload sandbox lives at most (default 1h)")
	f.Int64Var(&perOffload, "tokens-per-offload", 0, "offload pairing: inference tokens one offload may spend (0: the daily budget's remainder)")
	f.StringVar(&registry, "registry", "", "registry URL the peer reaches (default: this cluster's kars-mesh, as promoted)")
	f.StringVar(&relay, "relay", "", "relay WebSocket URL the peer reaches")
	f.StringVar(&systemNS, "system-namespace", "kars-system", "namespace of the controller and kars-mesh")
	return cmd
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func newPairRevokeCmd(c *cluster) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "revoke NAME | A B",
		Short: "Revoke a pairing: routers refuse the peer within seconds",
		Long: "revoke sets spec.revoked on the named KarsPairing (in --namespace, else everywhere), or\n" +
			"on both KarsPairings of `kars pair A B`. The controller pushes the change to the routers,\n" +
			"which end the session at once; revocation is final.",
		Example: "  kars pair revoke alice-laptop\n  kars pair revoke planner worker",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := c.client()
			if err != nil {
				return err
			}
			var list karsv1.KarsPairingList
			if err := cl.List(ctx, &list); err != nil {
				return describeGetError(err, "KarsPairings", "the cluster")
			}
			var targets []*karsv1.KarsPairing
			for i := range list.Items {
				kp := &list.Items[i]
				g := kp.Labels[controller.LabelPairing]
				match := false
				if len(args) == 2 {
					match = g == args[0]+"-"+args[1] || g == args[1]+"-"+args[0]
				} else {
					match = (kp.Name == args[0] && (c.namespace == "" || kp.Namespace == c.namespace)) || g == args[0]
				}
				if match {
					targets = append(targets, kp)
				}
			}
			if len(targets) == 0 {
				return fmt.Errorf("no KarsPairing matches %s (see `kars pair list`)", strings.Join(args, " "))
			}
			out := cmd.OutOrStdout()
			start := time.Now()
			for _, kp := range targets {
				if !kp.Spec.Revoked {
					patch := client.MergeFrom(kp.DeepCopy())
					kp.Spec.Revoked = true
					if err := cl.Patch(ctx, kp, patch); err != nil {
						return describeGetError(err, "KarsPairing", kp.Namespace+"/"+kp.Name)
					}
				}
				fmt.Fprintf(out, "revoked KarsPairing %s/%s\n", kp.Namespace, kp.Name)
			}
			if wait <= 0 {
				return nil
			}
			for _, kp := range targets {
				if err := waitPairingPhase(ctx, cl, client.ObjectKeyFromObject(kp), karsv1.PairingRevoked, wait); err != nil {
					return err
				}
			}
			fmt.Fprintf(out, "the controller reports every revoked pairing (%s)\n", time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "wait this long for the controller to report the revocation (0: do not wait)")
	return cmd
}

func waitPairingPhase(ctx context.Context, cl client.Client, key client.ObjectKey, phase string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		kp := &karsv1.KarsPairing{}
		err := cl.Get(ctx, key, kp)
		if (err == nil && kp.Status.Phase == phase) || (phase == karsv1.PairingRevoked && apierrors.IsNotFound(err)) {
			// A pairing deleted meanwhile (an offload's, whose namespace
			// the revocation ends) admits nobody either.
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("KarsPairing %s is %q after %s, want %s", key, kp.Status.Phase, within, phase)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func newPairListCmd(c *cluster) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List pairings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			return printPairings(cmd.Context(), cl, c.namespace, cmd.OutOrStdout())
		},
	}
}

func printPairings(ctx context.Context, cl client.Client, ns string, out io.Writer) error {
	var list karsv1.KarsPairingList
	opts := []client.ListOption{}
	if ns != "" {
		opts = append(opts, client.InNamespace(ns))
	}
	if err := cl.List(ctx, &list, opts...); err != nil {
		return describeGetError(err, "KarsPairings", "the cluster")
	}
	if len(list.Items) == 0 {
		fmt.Fprintln(out, "no pairings; create one with `kars pair A B` or `kars pair generate --name NAME`")
		return nil
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return list.Items[i].Namespace+"/"+list.Items[i].Name < list.Items[j].Namespace+"/"+list.Items[j].Name
	})
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tSANDBOX\tPEER\tPHASE\tPEER IDENTITY\tOFFLOADS\tTOKENS TODAY\tEXPIRES")
	today := time.Now().UTC().Format("2006-01-02")
	for _, kp := range list.Items {
		sb, peer := "-", kp.Spec.PeerSandbox
		if kp.Spec.SandboxRef != nil {
			sb = kp.Spec.SandboxRef.Name
		}
		if peer == "" {
			peer = "token:" + kp.Spec.DisplayName
		}
		// An offload pairing's live offloads (of its slots) and today's
		// tokens (charged + held by live offloads, of the daily budget).
		offloads, tokens := "-", "-"
		if kp.Spec.SandboxRef == nil && kp.Spec.PeerSandbox == "" {
			offloads = fmt.Sprintf("%d/%d", kp.Status.SlotsInUse, max(kp.Spec.Slots, 1))
			used := int64(0)
			if kp.Status.TokensDay == today {
				used = kp.Status.TokensUsed
			}
			tokens = fmt.Sprintf("%d+%d", used, kp.Status.TokensReserved)
			if tb := kp.Spec.TokenBudget; tb != nil && tb.Daily > 0 {
				tokens += fmt.Sprintf("/%d", tb.Daily)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", kp.Namespace, kp.Name, sb, peer, dash(kp.Status.Phase), dash(kp.Status.PeerIdentity),
			offloads, tokens, kp.Spec.ExpiresAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

// routerMesh reads a sandbox's router mesh status over its admin API.
func (c *cluster) routerMesh(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox) (*meshStatus, error) {
	ep, err := c.adminEndpoint(ctx, cl, sb)
	if err != nil {
		return nil, err
	}
	defer ep.close()
	var st meshStatus
	return &st, adminJSON(ctx, ep, http.MethodGet, controller.MeshStatusPath, nil, &st)
}

// adminJSON calls a router admin endpoint and decodes its JSON answer.
func adminJSON(ctx context.Context, ep *endpoint, method, path string, body io.Reader, v any) error {
	resp, err := ep.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("this router has no mesh endpoint (is the mesh on for the cluster?)")
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("router admin API: %s: %s", resp.Status, strings.TrimSpace(string(raw)))
	}
	return json.Unmarshal(raw, v)
}
