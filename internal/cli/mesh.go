package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/offload"
	"github.com/kars-io/kars/internal/pairing"
	"github.com/kars-io/kars/internal/render"
)

// meshStatus is a router's GET /admin/v1/mesh answer.
type meshStatus = bridge.Status

func newMeshCmd(c *cluster) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mesh",
		Short: "Inspect and operate the AgentMesh: identities, trust, sessions, federation",
	}
	cmd.AddCommand(newMeshStatusCmd(c), newMeshListCmd(c), newMeshPromoteCmd(c), newMeshPeerCmd(c), newMeshAuthCmd(c))
	return cmd
}

func newMeshStatusCmd(c *cluster) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [SANDBOX]",
		Short: "Trust state, sessions and pairings of one sandbox's router (or every sandbox's)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := c.client()
			if err != nil {
				return err
			}
			sbs, err := c.meshSandboxes(ctx, cl, args)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			all := map[string]*meshStatus{}
			for i, sb := range sbs {
				st, err := c.routerMesh(ctx, cl, sb)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s/%s: %v\n", sb.Namespace, sb.Name, err)
					continue
				}
				if asJSON {
					all[sb.Namespace+"/"+sb.Name] = st
					continue
				}
				if i > 0 {
					fmt.Fprintln(out)
				}
				printMeshStatus(out, sb, st)
			}
			if asJSON {
				return json.NewEncoder(out).Encode(all)
			}
			fmt.Fprintln(out)
			return printPairings(ctx, cl, c.namespace, out)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the routers' JSON")
	return cmd
}

func printMeshStatus(out io.Writer, sb *karsv1.KarsSandbox, st *meshStatus) {
	conn := "connected"
	if !st.Connected {
		conn = "NOT connected"
	}
	fmt.Fprintf(out, "%s/%s  %s\n  relay %s (%s), trust threshold %d, inbox %d\n", sb.Namespace, sb.Name, st.DID, st.Relay, conn, st.Threshold, st.Inbox)
	if len(st.Peers) == 0 {
		fmt.Fprintln(out, "  no peers: pair with `kars pair "+sb.Name+" OTHER`")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PEER\tDID\tTRUST\tTIER\tADMITTED\tSESSION\tPAIRING EXPIRES")
	for _, p := range st.Peers {
		admitted := "yes"
		if !p.Admitted {
			admitted = "no: " + p.Refusal
		}
		sess := "-"
		if p.Session != nil {
			sess = "until " + p.Session.ExpiresAt.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "  @%s\t%s\t%d\t%s\t%s\t%s\t%s\n", p.Name, p.DID, p.Trust.Score, p.Trust.Tier, admitted, sess, p.ExpiresAt.Format(time.RFC3339))
	}
	tw.Flush()
}

// meshSandboxes resolves the named sandbox, or lists every one.
func (c *cluster) meshSandboxes(ctx context.Context, cl client.Client, args []string) ([]*karsv1.KarsSandbox, error) {
	if len(args) == 1 {
		sb, err := c.findSandbox(ctx, cl, args[0])
		if err != nil {
			return nil, err
		}
		return []*karsv1.KarsSandbox{sb}, nil
	}
	var list karsv1.KarsSandboxList
	opts := []client.ListOption{}
	if c.namespace != "" {
		opts = append(opts, client.InNamespace(c.namespace))
	}
	if err := cl.List(ctx, &list, opts...); err != nil {
		return nil, describeGetError(err, "sandboxes", "the cluster")
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return list.Items[i].Namespace+"/"+list.Items[i].Name < list.Items[j].Namespace+"/"+list.Items[j].Name
	})
	out := make([]*karsv1.KarsSandbox, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out, nil
}

func newMeshListCmd(c *cluster) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List mesh endpoints: each sandbox's identity, connection, peers and sessions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cl, err := c.client()
			if err != nil {
				return err
			}
			sbs, err := c.meshSandboxes(ctx, cl, nil)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SANDBOX\tNAMESPACE\tDID\tCONNECTED\tPEERS\tSESSIONS\tOFFLOAD")
			for _, sb := range sbs {
				did, conn, peers, sessions := "-", "-", 0, 0
				if st, err := c.routerMesh(ctx, cl, sb); err == nil {
					did, conn, peers = st.DID, fmt.Sprint(st.Connected), len(st.Peers)
					for _, p := range st.Peers {
						if p.Session != nil {
							sessions++
						}
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", sb.Name, sb.Namespace, did, conn, peers, sessions, dash(sb.Labels["kars.io/offload"]))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			var pairings karsv1.KarsPairingList
			opts := []client.ListOption{}
			if c.namespace != "" {
				opts = append(opts, client.InNamespace(c.namespace))
			}
			if err := cl.List(ctx, &pairings, opts...); err != nil {
				// The sandboxes are listed already; a user who may not
				// list pairings still sees them.
				fmt.Fprintf(cmd.OutOrStdout(), "\n(offload pairings not listed: %v)\n", describeGetError(err, "pairings", "the cluster"))
				return nil
			}
			return offloadTable(cmd.OutOrStdout(), pairings.Items, sbs, time.Now())
		},
	}
}

// offloadTable prints each offload pairing (one with an offload template)
// with its slots, today's tokens, expiry, state and its live offload
// sandboxes (those labelled with its name); nothing when there is none.
func offloadTable(w io.Writer, pairings []karsv1.KarsPairing, sbs []*karsv1.KarsSandbox, now time.Time) error {
	live := map[string][]string{}
	for _, sb := range sbs {
		if sb.Labels[offload.LabelOffload] == "true" {
			p := sb.Labels[offload.LabelPairing]
			live[p] = append(live[p], sb.Namespace+"/"+sb.Name)
		}
	}
	sort.Slice(pairings, func(i, j int) bool {
		return pairings[i].Namespace+"/"+pairings[i].Name < pairings[j].Namespace+"/"+pairings[j].Name
	})
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := false
	for _, p := range pairings {
		if p.Spec.Offload == nil {
			continue
		}
		if !header {
			fmt.Fprintln(w)
			fmt.Fprintln(tw, "OFFLOAD PAIRING\tNAMESPACE\tSLOTS\tTOKENS TODAY\tEXPIRES\tSTATE\tOFFLOADS")
			header = true
		}
		state := "active"
		switch {
		case p.Spec.Revoked:
			state = "revoked"
		case !p.Spec.ExpiresAt.IsZero() && !now.Before(p.Spec.ExpiresAt.Time):
			state = "expired"
		}
		tokens := fmt.Sprint(p.Status.TokensUsed)
		if p.Status.TokensReserved > 0 {
			tokens += fmt.Sprintf(" (+%d held)", p.Status.TokensReserved)
		}
		offloads := live[p.Name]
		sort.Strings(offloads)
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", p.Name, p.Namespace, p.Status.SlotsInUse, p.Spec.Slots, tokens,
			p.Spec.ExpiresAt.UTC().Format(time.DateOnly), state, dash(strings.Join(offloads, ",")))
	}
	return tw.Flush()
}

func newMeshPromoteCmd(c *cluster) *cobra.Command {
	var portForward bool
	var systemNS string
	cmd := &cobra.Command{
		Use:   "promote --port-forward",
		Short: "Expose the cluster's mesh registry and relay on this workstation",
		Long: "promote makes kars-mesh reachable from this workstation, so that peers outside the cluster\n" +
			"(a laptop's OpenClaw with the kars-mesh plugin, another cluster) can register and connect\n" +
			"through it: with --port-forward it forwards 127.0.0.1:18080 (registry) and\n" +
			"127.0.0.1:18765 (relay) to kars-mesh until interrupted. Under `kars dev` kars-mesh\n" +
			"already listens on this machine.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if _, dev := c.kubeconfigPath(); dev {
				m := devenv.MeshEndpoints()
				fmt.Fprintf(out, "kars dev runs kars-mesh on this machine already:\n  registry %s\n  relay    %s\n", m.Registry, m.Relay)
				return nil
			}
			if !portForward {
				return fmt.Errorf("say how to expose it: --port-forward (for now the only way; `kars up --expose-registry` comes with the packaging)")
			}
			ctx := cmd.Context()
			cl, err := c.client()
			if err != nil {
				return err
			}
			var pods corev1.PodList
			if err := cl.List(ctx, &pods, client.InNamespace(systemNS), client.MatchingLabels{render.LabelName: render.MeshName}); err != nil {
				return describeGetError(err, "kars-mesh pods", systemNS)
			}
			var pod *corev1.Pod
			for i := range pods.Items {
				if pods.Items[i].Status.Phase == corev1.PodRunning {
					pod = &pods.Items[i]
				}
			}
			if pod == nil {
				return fmt.Errorf("kars-mesh is not running in %s (the controller deploys it with -deploy-mesh)", systemNS)
			}
			stop, err := c.forwardPorts(ctx, pod, []string{fmt.Sprintf("%d:%d", render.MeshRegistryPort, render.MeshRegistryPort), fmt.Sprintf("%d:%d", render.MeshRelayPort, render.MeshRelayPort)})
			if err != nil {
				return err
			}
			defer stop()
			fmt.Fprintf(out, "kars-mesh promoted (Ctrl-C to stop):\n  registry http://127.0.0.1:%d\n  relay    ws://127.0.0.1:%d/ws\n"+
				"mint a token for these with: kars pair generate --name NAME --registry http://127.0.0.1:%d --relay ws://127.0.0.1:%d/ws\n",
				render.MeshRegistryPort, render.MeshRelayPort, render.MeshRegistryPort, render.MeshRelayPort)
			<-ctx.Done()
			return nil
		},
	}
	cmd.Flags().BoolVar(&portForward, "port-forward", false, "forward the registry and relay ports to this workstation")
	cmd.Flags().StringVar(&systemNS, "system-namespace", "kars-system", "namespace of kars-mesh")
	return cmd
}

// forwardPorts port-forwards local:remote pairs on 127.0.0.1 to pod.
func (c *cluster) forwardPorts(ctx context.Context, pod *corev1.Pod, ports []string) (func(), error) {
	cfg, err := c.restConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return nil, err
	}
	u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	stopCh, ready := make(chan struct{}), make(chan struct{})
	var errOut strings.Builder
	fw, err := portforward.NewOnAddresses(spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u),
		[]string{"127.0.0.1"}, ports, stopCh, ready, io.Discard, &errOut)
	if err != nil {
		return nil, err
	}
	failed := make(chan error, 1)
	go func() { failed <- fw.ForwardPorts() }()
	select {
	case <-ready:
		return func() { close(stopCh) }, nil
	case err := <-failed:
		return nil, fmt.Errorf("port-forward to %s/%s: %v %s", pod.Namespace, pod.Name, err, errOut.String())
	case <-ctx.Done():
		close(stopCh)
		return nil, ctx.Err()
	}
}

func newMeshAuthCmd(c *cluster) *cobra.Command {
	var sandbox, token string
	cmd := &cobra.Command{
		Use:   "auth --sandbox SANDBOX",
		Short: "Redeem a pairing token (KARS_PAIRING_TOKEN) for one of this cluster's sandboxes",
		Long: "auth redeems a pairing token minted on another cluster (`kars pair generate`) for\n" +
			"SANDBOX: its router signs the redemption with its own mesh identity and presents it at\n" +
			"the registry the token names, which binds the token to it (once: a token is single\n" +
			"use). Then a KarsPairing here pairs SANDBOX with the token's issuer, so both routers\n" +
			"admit each other. The token is read from --token or KARS_PAIRING_TOKEN.",
		Example: "  KARS_PAIRING_TOKEN=azc_pair_v1_… kars mesh auth --sandbox worker",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if token == "" {
				token = os.Getenv("KARS_PAIRING_TOKEN")
			}
			if token == "" {
				return fmt.Errorf("no token: pass --token or set KARS_PAIRING_TOKEN")
			}
			p, err := pairing.Parse(token)
			if err != nil {
				return err
			}
			if sandbox == "" {
				return fmt.Errorf("--sandbox names the sandbox the pairing is for")
			}
			cl, sb, err := c.sandbox(ctx, sandbox)
			if err != nil {
				return err
			}
			ep, err := c.adminEndpoint(ctx, cl, sb)
			if err != nil {
				return err
			}
			defer ep.close()
			body, _ := json.Marshal(map[string]string{"token": token})
			var redeemed struct {
				DID    string         `json:"did"`
				Result pairing.Result `json:"result"`
			}
			if err := adminJSON(ctx, ep, http.MethodPost, bridge.AdminRedeemPath, bytes.NewReader(body), &redeemed); err != nil {
				return err
			}
			res := redeemed.Result
			if res.Issuer == "" {
				return fmt.Errorf("the token was redeemed (pairing %s) but names no issuing sandbox to pair with", res.Pairing)
			}
			var caps []karsv1.PairingCapability
			for _, x := range res.Capabilities {
				caps = append(caps, karsv1.PairingCapability(x))
			}
			// Here the pairing is named for the issuing sandbox: it is how
			// this sandbox's agent addresses it (@planner).
			name := p.Name
			if _, issuer, ok := strings.Cut(res.Sandbox, "/"); ok {
				name = issuer
			}
			h := pairing.Hash(token)
			kp := &karsv1.KarsPairing{
				// No token-hash label: this copy records a redemption made
				// elsewhere and is not itself redeemable.
				ObjectMeta: metav1.ObjectMeta{Namespace: sb.Namespace, Name: name,
					Annotations: map[string]string{controller.AnnotationPeerRegistry: res.Registry, controller.AnnotationPeerRelay: res.Relay}},
				Spec: karsv1.KarsPairingSpec{TokenHash: karsv1.Digest(h), DisplayName: name, Slots: int32(p.Slots),
					ExpiresAt: metav1.NewTime(res.ExpiresAt), Capabilities: caps, SandboxRef: &karsv1.LocalObjectReference{Name: sb.Name}},
			}
			if err := cl.Create(ctx, kp); err != nil {
				return describeGetError(err, "KarsPairing", sb.Namespace+"/"+name)
			}
			// This side's pairing is bound from the start: its peer is the
			// issuer the redemption named.
			// The controller may write the new object (finalizer, first
			// status) between Create and here: re-read and retry on a
			// conflict rather than fail a redemption that already happened.
			now := metav1.NewTime(time.Now().UTC().Truncate(time.Second))
			err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
				if err := cl.Get(ctx, client.ObjectKeyFromObject(kp), kp); err != nil {
					return err
				}
				kp.Status.Phase, kp.Status.PeerIdentity, kp.Status.RedeemedAt = karsv1.PairingActive, res.Issuer, &now
				return cl.Status().Update(ctx, kp)
			})
			if err != nil {
				return describeGetError(err, "KarsPairing status", sb.Namespace+"/"+name)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "redeemed: %s (%s) is paired with %s (pairing %s there, %s/%s here), until %s\n",
				sb.Name, redeemed.DID, res.Issuer, res.Pairing, sb.Namespace, name, res.ExpiresAt.Format(time.RFC3339))
			if err := waitPairingReady(ctx, cl, client.ObjectKeyFromObject(kp), time.Minute); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s's router admits @%s\n", sb.Name, name)
			return nil
		},
	}
	cmd.Flags().StringVar(&sandbox, "sandbox", "", "the sandbox to pair")
	cmd.Flags().StringVar(&token, "token", "", "the pairing token (default: $KARS_PAIRING_TOKEN)")
	return cmd
}
