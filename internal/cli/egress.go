package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/egress/allowlist"
	"github.com/kars-io/kars/internal/egress/artifact"
	"github.com/kars-io/kars/internal/egress/learn"
)

func newEgressCmd(c *cluster) *cobra.Command {
	var learned, enforce, learnMode, plainHTTP bool
	var approve []string
	var reason, ticket, registry, keyFile, tag string
	var ttl time.Duration
	var ports []int32
	cmd := &cobra.Command{
		Use:   "egress NAME",
		Short: "Review, approve and enforce a sandbox's egress",
		Long: "egress shows what the sandbox's router enforces. --learned lists the destinations the\n" +
			"agent asked for, with counts; --approve creates an EgressApproval (reason, ticket, ttl);\n" +
			"--enforce builds an allowlist from the learned destinations the router allowed and the\n" +
			"active approvals, signs it (cosign-compatible), pushes it to --registry as an OCI artifact,\n" +
			"points spec.networkPolicy.allowlistRef at its digest and switches the sandbox to Strict.",
		Example: "  kars egress analyst --learned\n" +
			"  kars egress analyst --approve api.github.com --reason 'release automation' --ticket CHG-42 --ttl 72h\n" +
			"  kars egress analyst --enforce --registry karsacr.azurecr.io/policy/egress-allowlist/analyst",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			n := 0
			for _, b := range []bool{learned, enforce, learnMode, len(approve) > 0} {
				if b {
					n++
				}
			}
			if n > 1 {
				return errors.New("use one of --learned, --approve, --enforce, --learn at a time")
			}
			switch {
			case learned:
				return c.showLearned(ctx, cl, sb, out)
			case len(approve) > 0:
				return createApproval(ctx, cl, sb, approve, ports, reason, ticket, ttl, out)
			case learnMode:
				return setEgressMode(ctx, cl, sb, karsv1.EgressLearn, nil, out)
			case enforce:
				if registry == "" {
					return errors.New("--enforce needs --registry REGISTRY/REPOSITORY to push the signed allowlist to")
				}
				return c.enforce(ctx, cl, sb, registry, tag, keyFile, plainHTTP, out)
			}
			return c.showEgress(ctx, cl, sb, out)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&learned, "learned", false, "list the destinations the agent asked for, with counts")
	f.StringSliceVar(&approve, "approve", nil, "approve HOST (or *.DOMAIN) for a limited time: creates an EgressApproval (repeatable, comma-separated)")
	f.Int32SliceVar(&ports, "ports", nil, "ports the approval allows (default 443)")
	f.StringVar(&reason, "reason", "", "why the hosts are needed (required with --approve; kept for audit)")
	f.StringVar(&ticket, "ticket", "", "change or incident reference for the approval")
	f.DurationVar(&ttl, "ttl", 24*time.Hour, "how long the approval lasts (1m to 720h)")
	f.BoolVar(&enforce, "enforce", false, "sign and publish an allowlist of the learned and approved hosts, and switch to Strict")
	f.BoolVar(&learnMode, "learn", false, "switch the sandbox to Learn mode")
	f.StringVar(&registry, "registry", "", "REGISTRY/REPOSITORY to push the allowlist to (with --enforce)")
	f.StringVar(&tag, "tag", "", "tag for the pushed allowlist (optional; the sandbox references it by digest)")
	f.StringVar(&keyFile, "key", "", "ECDSA signing key, PEM (default: "+devenv.EgressKeyFile()+", created when missing)")
	f.BoolVar(&plainHTTP, "plain-http", false, "talk HTTP to the registry (a local registry); default: HTTPS, and HTTP for the kars dev registry")
	return cmd
}

// egressStatus is the router's GET /admin/v1/egress.
type egressStatus struct {
	Mode            string `json:"mode"`
	AllowedHosts    int    `json:"allowedHosts"`
	AllowlistDigest string `json:"allowlistDigest"`
	AllowlistHosts  int    `json:"allowlistHosts"`
	Approvals       []struct {
		Name      string    `json:"name"`
		Hosts     []string  `json:"hosts"`
		Ports     []int32   `json:"ports"`
		ExpiresAt time.Time `json:"expiresAt"`
		Active    bool      `json:"active"`
	} `json:"approvals"`
	Blocklist *struct {
		Version string `json:"version"`
		Domains int    `json:"domains"`
		Sources []struct {
			Name      string `json:"name"`
			LastError string `json:"lastError"`
		} `json:"sources"`
	} `json:"blocklist"`
	BlocklistAge string `json:"blocklistAge"`
	OpenTunnels  int    `json:"openTunnels"`
}

func (c *cluster) routerGet(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, path string, v any) error {
	ep, err := c.adminEndpoint(ctx, cl, sb)
	if err != nil {
		return err
	}
	defer ep.close()
	resp, err := ep.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return fmt.Errorf("router of %s/%s: %w", sb.Namespace, sb.Name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("router of %s/%s answered %s: %s", sb.Namespace, sb.Name, resp.Status, strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, v)
}

func (c *cluster) showEgress(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, out io.Writer) error {
	var st egressStatus
	if err := c.routerGet(ctx, cl, sb, "/admin/v1/egress", &st); err != nil {
		return err
	}
	fmt.Fprintf(out, "sandbox %s/%s: egress mode %s, %d allowedHosts, %d open tunnels\n", sb.Namespace, sb.Name, st.Mode, st.AllowedHosts, st.OpenTunnels)
	if st.AllowlistDigest != "" {
		fmt.Fprintf(out, "allowlist: %s (%d hosts, verified by the controller)\n", st.AllowlistDigest, st.AllowlistHosts)
	} else if ref := sb.Spec.NetworkPolicy.AllowlistRef; ref != nil {
		fmt.Fprintf(out, "allowlist: %s/%s@%s is NOT enforced (see the AllowlistVerified condition)\n", ref.Registry, ref.Repository, ref.Digest)
	}
	for _, a := range st.Approvals {
		state := "active"
		if !a.Active {
			state = "expired"
		}
		fmt.Fprintf(out, "approval %s: %s ports %v until %s (%s)\n", a.Name, strings.Join(a.Hosts, ","), a.Ports, a.ExpiresAt.Local().Format(time.RFC3339), state)
	}
	if b := st.Blocklist; b != nil {
		fmt.Fprintf(out, "blocklist: %d domains, version %s, age %s\n", b.Domains, shortVersion(b.Version), st.BlocklistAge)
		for _, s := range b.Sources {
			if s.LastError != "" {
				fmt.Fprintf(out, "  source %s: last refresh failed (%s); the last good list stays\n", s.Name, s.LastError)
			}
		}
	} else {
		fmt.Fprintln(out, "blocklist: none configured")
	}
	return nil
}

func shortVersion(v string) string {
	if len(v) > 19 {
		return v[:19]
	}
	return v
}

type learnedList struct {
	Mode    string        `json:"mode"`
	Entries []learn.Entry `json:"entries"`
	Dropped uint64        `json:"dropped"`
}

func (c *cluster) showLearned(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, out io.Writer) error {
	var l learnedList
	if err := c.routerGet(ctx, cl, sb, "/admin/v1/egress/learned", &l); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tPORT\tALLOWED\tDENIED\tLAST DECISION\tLAST SEEN")
	for _, e := range l.Entries {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s %s\t%s\n", e.Host, e.Port, e.Allowed, e.Denied, e.Step, e.Rule, e.LastSeen.Local().Format(time.DateTime))
	}
	tw.Flush()
	fmt.Fprintf(out, "%d destinations (mode %s)", len(l.Entries), l.Mode)
	if l.Dropped > 0 {
		fmt.Fprintf(out, "; %d more not recorded (the record holds %d)", l.Dropped, learn.MaxEntries)
	}
	fmt.Fprintln(out)
	return nil
}

func createApproval(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, hosts []string, ports []int32, reason, ticket string, ttl time.Duration, out io.Writer) error {
	if len(strings.TrimSpace(reason)) < 3 {
		return errors.New("--approve needs --reason (at least 3 characters; it is kept for audit)")
	}
	a := &karsv1.EgressApproval{
		ObjectMeta: metav1.ObjectMeta{Namespace: sb.Namespace, GenerateName: sb.Name + "-"},
		Spec: karsv1.EgressApprovalSpec{Sandbox: sb.Name, Reason: reason, Ticket: ticket, Ports: ports,
			TTL: &metav1.Duration{Duration: ttl}},
	}
	for _, h := range hosts {
		e, err := allowlist.ParseEntry(h)
		if err != nil {
			return err
		}
		if len(e.Ports) > 0 {
			return fmt.Errorf("--approve %s: give ports with --ports, not in the host", h)
		}
		a.Spec.Hosts = append(a.Spec.Hosts, karsv1.Hostname(e.Host))
	}
	if err := cl.Create(ctx, a); err != nil {
		return fmt.Errorf("create EgressApproval for %s: %w", sb.Name, err)
	}
	fmt.Fprintf(out, "created EgressApproval %s/%s: %s for %s (reason %q", a.Namespace, a.Name, strings.Join(hosts, ","), ttl, reason)
	if ticket != "" {
		fmt.Fprintf(out, ", ticket %s", ticket)
	}
	fmt.Fprintln(out, "); the router enforces it and its expiry")
	return nil
}

func setEgressMode(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, mode karsv1.EgressMode, ref *karsv1.OCIArtifactReference, out io.Writer) error {
	before := sb.DeepCopy()
	sb.Spec.NetworkPolicy.EgressMode = mode
	if ref != nil {
		sb.Spec.NetworkPolicy.AllowlistRef = ref
	}
	if err := cl.Patch(ctx, sb, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("update KarsSandbox %s/%s: %w", sb.Namespace, sb.Name, err)
	}
	fmt.Fprintf(out, "sandbox %s/%s: egress mode %s", sb.Namespace, sb.Name, mode)
	if ref != nil {
		fmt.Fprintf(out, ", allowlistRef %s/%s@%s", ref.Registry, ref.Repository, ref.Digest)
	}
	fmt.Fprintln(out)
	return nil
}

// enforce builds, signs, publishes and references the allowlist.
func (c *cluster) enforce(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, registry, tag, keyFile string, plainHTTP bool, out io.Writer) error {
	var l learnedList
	if err := c.routerGet(ctx, cl, sb, "/admin/v1/egress/learned", &l); err != nil {
		return err
	}
	var entries []allowlist.Entry
	for _, e := range l.Entries {
		// What the router let through — in Learn mode, by an approval or
		// by the allowlist — and never what it refused.
		if e.Allowed == 0 || !slices.Contains([]string{"learn", "allowlist", "approval"}, e.Step) {
			continue
		}
		entries = append(entries, allowlist.Entry{Host: e.Host, Ports: []uint16{e.Port}})
	}
	// The approvals as the API holds them (the router may not have
	// loaded one created a moment ago).
	var approvals karsv1.EgressApprovalList
	if err := cl.List(ctx, &approvals, client.InNamespace(sb.Namespace)); err != nil {
		return fmt.Errorf("list EgressApprovals in %s: %w", sb.Namespace, err)
	}
	for i := range approvals.Items {
		a := &approvals.Items[i]
		if a.Spec.Sandbox != sb.Name || !time.Now().Before(controller.ApprovalExpiresAt(a)) {
			continue
		}
		for _, h := range a.Spec.Hosts {
			en := allowlist.Entry{Host: string(h)}
			for _, p := range a.Spec.Ports {
				en.Ports = append(en.Ports, uint16(p))
			}
			entries = append(entries, en)
		}
	}
	if len(entries) == 0 {
		return fmt.Errorf("sandbox %s has no learned or approved destinations: run it in Learn mode first (`kars egress %s --learn`)", sb.Name, sb.Name)
	}
	doc, err := allowlist.NewDocument(sb.Namespace+"/"+sb.Name, entries)
	if err != nil {
		return err
	}
	key, err := devenv.LoadOrCreateEgressKey(keyFile)
	if err != nil {
		return err
	}
	reg, repo, _ := artifact.SplitReference(registry)
	if repo == "" {
		return fmt.Errorf("--registry %q: want REGISTRY/REPOSITORY", registry)
	}
	o := artifact.Options{PlainHTTP: plainHTTP || reg == devenv.RegistryAddr}
	// Credentials as docker and oras keep them (~/.docker/config.json and
	// its helpers, e.g. after `az acr login`).
	if store, err := credentials.NewStoreFromDocker(credentials.StoreOptions{}); err == nil {
		o.Credential = credentials.Credential(store)
	}
	digest, err := artifact.PushAllowlist(ctx, o, reg, repo, tag, doc.Marshal(), key)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "allowlist of %d destinations signed (key %s…) and pushed: %s/%s@%s\n", len(doc.Hosts), artifact.KeyID(&key.PublicKey)[:12], reg, repo, digest)
	for _, h := range doc.Hosts {
		fmt.Fprintf(out, "  %s\n", h)
	}
	ref := &karsv1.OCIArtifactReference{Registry: reg, Repository: repo, Digest: karsv1.Digest(digest), ArtifactType: allowlist.DocumentMediaType}
	return setEgressMode(ctx, cl, sb, karsv1.EgressStrict, ref, out)
}
