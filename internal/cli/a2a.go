package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/routerconfig"
)

func newA2ACmd(c *cluster) *cobra.Command {
	cmd := &cobra.Command{Use: "a2a", Short: "Expose sandboxes to foreign A2A agents through the kars-a2a-gateway"}
	cmd.AddCommand(newA2ASchemaCmd(c), newA2AListCmd(c), newA2AExposeCmd(c), newA2ARevokeCmd(c), newA2AThumbprintCmd())
	return cmd
}

// a2aSchema is the A2A surface every exposed sandbox publishes.
const a2aSchema = `A2A surface of kars (docs/a2a.md)

Endpoint      https://<gateway>/a2a/<namespace>/<sandbox>         JSON-RPC 2.0, POST
Cards         <endpoint>/.well-known/agent-card.json               A2A 1.0, signed
              <endpoint>/.well-known/agent.json                    A2A 0.3, signed
              <endpoint>/.well-known/jwks.json                     the card signing key
Signature     detached JWS (EdDSA) over the RFC 8785 canonical card without "signatures";
              pin the key by the thumbprint ` + "`kars a2a schema SANDBOX`" + ` prints

Version       A2A-Version header: 1.0, or 0.3 (also when the header is absent)
Methods 1.0   SendMessage  SendStreamingMessage*  GetTask  ListTasks  CancelTask  SubscribeToTask*
Methods 0.3   message/send  message/stream*  tasks/get  tasks/cancel  tasks/resubscribe*
              * only when spec.a2a.allowStreaming is true
Skill         message.metadata.skill (or the request's metadata.skill): one of advertisedSkills
Answers       a blocking SendMessage returns the agent's reply as a Message; with
              returnImmediately (0.3: blocking=false) it returns a Task to get, cancel or subscribe to

Caller        TLS client certificate (Ed25519 or ECDSA P-256) whose key's RFC 7638 thumbprint is in
              allowedCallers, and the caller's own AgentCard signed by that key, base64url in the
              Kars-A2A-Caller-Card header (the key in the signature's protected "jwk")
Checked       card signature and thumbprint, trust >= minimumTrustScore, rateLimit per caller,
              bodyCapBytes, method, skill, sessionMaxSeconds, governance a2a:receive:<skill>
Refusals      JSON-RPC error with data.reason: -31401 unauthenticated (card), -31403 unauthorized
              (caller, trust, skill, policy, not exposed), -31429 rate limited (HTTP 429),
              -32600 body over the cap (HTTP 413), -32601 method, -32009 version, -32004 streaming
`

func newA2ASchemaCmd(c *cluster) *cobra.Command {
	return &cobra.Command{
		Use:   "schema [NAME]",
		Short: "Show the A2A surface this cluster publishes, and a sandbox's signed card",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			fmt.Fprint(out, a2aSchema)
			if len(args) == 0 {
				return nil
			}
			ctx := cmd.Context()
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			info, err := c.routerA2A(ctx, cl, sb)
			if err != nil {
				return err
			}
			if !info.Exposed {
				fmt.Fprintf(out, "\n%s is not exposed (A2AExposed: %s)\n", sb.Name, a2aState(sb))
				return nil
			}
			fmt.Fprintf(out, "\nSandbox       %s/%s\nURL           %s\nCard key      %s\nExpires       %s\n\nCard (A2A 1.0):\n",
				sb.Namespace, sb.Name, info.PublicURL, info.CardKeyThumbprint, info.ExpiresAt.UTC().Format(time.RFC3339))
			var pretty any
			if err := json.Unmarshal(info.Card, &pretty); err != nil {
				return fmt.Errorf("the router's card is not JSON: %w", err)
			}
			b, _ := json.MarshalIndent(pretty, "", "  ")
			fmt.Fprintln(out, string(b))
			return nil
		},
	}
}

// routerA2AInfo is the router admin API's /admin/v1/a2a answer.
type routerA2AInfo struct {
	Exposed           bool            `json:"exposed"`
	PublicURL         string          `json:"publicURL"`
	ExpiresAt         time.Time       `json:"expiresAt"`
	CardKeyThumbprint string          `json:"cardKeyThumbprint"`
	Card              json.RawMessage `json:"card"`
}

func (c *cluster) routerA2A(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox) (*routerA2AInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ep, err := c.adminEndpoint(ctx, cl, sb)
	if err != nil {
		return nil, err
	}
	defer ep.close()
	resp, err := ep.do(ctx, http.MethodGet, "/admin/v1/a2a", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("router admin answered %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	var info routerA2AInfo
	if err := json.Unmarshal(raw, &info); err != nil {
		return nil, fmt.Errorf("unreadable A2A report: %w", err)
	}
	return &info, nil
}

// a2aState is the A2AExposed condition in one word and its reason.
func a2aState(sb *karsv1.KarsSandbox) string {
	cond := meta.FindStatusCondition(sb.Status.Conditions, karsv1.ConditionA2AExposed)
	if cond == nil {
		return "unknown"
	}
	if cond.ObservedGeneration != sb.Generation {
		return "pending"
	}
	return string(cond.Status) + "/" + cond.Reason
}

func newA2AListCmd(c *cluster) *cobra.Command {
	return &cobra.Command{
		Use:   "list-exposed",
		Short: "List sandboxes with A2A exposure: callers, skills, expiry, trust floor",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			var list karsv1.KarsSandboxList
			if err := cl.List(cmd.Context(), &list); err != nil {
				return err
			}
			return printExposed(cmd.OutOrStdout(), list.Items, time.Now())
		},
	}
}

func printExposed(out io.Writer, items []karsv1.KarsSandbox, now time.Time) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SANDBOX\tEXPOSED\tCALLERS\tSKILLS\tEXPIRES\tTRUST FLOOR\tRATE")
	n := 0
	for i := range items {
		sb := &items[i]
		a := sb.Spec.A2A
		if !a.Enabled {
			continue
		}
		n++
		var callers, skills []string
		for _, c := range a.AllowedCallers {
			name := c.DisplayName
			if name == "" {
				name = string(c.JWSThumbprint)[:min(len(c.JWSThumbprint), 19)] + "…"
			}
			callers = append(callers, name)
		}
		for _, s := range a.AdvertisedSkills {
			skills = append(skills, s.Name)
		}
		expires := "-"
		if a.ExpiresAt != nil {
			expires = a.ExpiresAt.UTC().Format(time.RFC3339)
			if d := a.ExpiresAt.Sub(now); d > 0 {
				expires += " (in " + d.Round(time.Minute).String() + ")"
			} else {
				expires += " (ended)"
			}
		}
		floor := "500"
		if a.MinimumTrustScore != nil {
			floor = strconv.Itoa(int(*a.MinimumTrustScore))
		}
		rate := "-"
		if a.RateLimit != nil {
			rate = fmt.Sprintf("%d/min burst %d", a.RateLimit.RPM, a.RateLimit.Burst)
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sb.Namespace, sb.Name, a2aState(sb),
			strings.Join(callers, ","), strings.Join(skills, ","), expires, floor, rate)
	}
	if n == 0 {
		fmt.Fprintln(out, "No sandbox has spec.a2a.enabled. Expose one with `kars a2a expose NAME --caller sha256:… --skill NAME --expires 7d`.")
		return nil
	}
	return tw.Flush()
}

// exposeOptions are `kars a2a expose`'s flags.
type exposeOptions struct {
	callers   []string
	skills    []string
	expires   string
	minTrust  int
	rpm       int
	burst     int
	bodyCap   int64
	session   int
	streaming bool
	dryRun    bool
}

var thumbprintRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)

// exposePatch builds the merge patch scenario 5 shows (use-cases.md) from
// the flags, checking what the API and the controller would refuse.
func exposePatch(o exposeOptions, now time.Time) ([]byte, error) {
	if len(o.callers) == 0 {
		return nil, errors.New("name at least one caller: --caller sha256:<thumbprint>[=display name] (see `kars a2a thumbprint`)")
	}
	if len(o.skills) == 0 {
		return nil, errors.New("advertise at least one skill: --skill NAME[=description]")
	}
	expires, err := parseExpiry(o.expires, now)
	if err != nil {
		return nil, err
	}
	type caller struct {
		JWSThumbprint string `json:"jwsThumbprint"`
		DisplayName   string `json:"displayName,omitempty"`
	}
	type skill struct {
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
	}
	a := map[string]any{
		"enabled": true, "expiresAt": expires.UTC().Format(time.RFC3339),
		"minimumTrustScore": o.minTrust, "rateLimit": map[string]int{"rpm": o.rpm, "burst": o.burst},
		"bodyCapBytes": o.bodyCap, "sessionMaxSeconds": o.session, "allowStreaming": o.streaming,
	}
	var callers []caller
	for _, c := range o.callers {
		tp, name, _ := strings.Cut(c, "=")
		if !thumbprintRE.MatchString(tp) {
			return nil, fmt.Errorf("--caller %q: want sha256:<64 lowercase hex>[=display name]", c)
		}
		callers = append(callers, caller{JWSThumbprint: tp, DisplayName: name})
	}
	var skills []skill
	for _, s := range o.skills {
		name, desc, _ := strings.Cut(s, "=")
		skills = append(skills, skill{Name: name, Description: desc})
	}
	a["allowedCallers"], a["advertisedSkills"] = callers, skills
	return json.Marshal(map[string]any{"spec": map[string]any{"a2a": a}})
}

// parseExpiry reads --expires: a duration ("7d", "36h") from now or an
// RFC 3339 time, at most 30 days ahead.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("--expires is required: exposure must end (for example --expires 7d; at most 30d)")
	}
	var t time.Time
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 {
			return t, fmt.Errorf("--expires %q: want a number of days such as 7d", s)
		}
		t = now.Add(time.Duration(n) * 24 * time.Hour)
	} else if d, err := time.ParseDuration(s); err == nil {
		t = now.Add(d)
	} else if t, err = time.Parse(time.RFC3339, s); err != nil {
		return t, fmt.Errorf("--expires %q: want a duration (7d, 36h) or an RFC 3339 time", s)
	}
	switch {
	case !t.After(now):
		return t, fmt.Errorf("--expires %s is not in the future", t.UTC().Format(time.RFC3339))
	case t.Sub(now) > routerconfig.MaxA2AExposure:
		return t, fmt.Errorf("--expires %s is %s ahead: exposure windows are capped at 30 days", t.UTC().Format(time.RFC3339), t.Sub(now).Round(time.Hour))
	}
	return t.Truncate(time.Second), nil
}

func newA2AExposeCmd(c *cluster) *cobra.Command {
	var o exposeOptions
	cmd := &cobra.Command{
		Use:   "expose NAME --caller sha256:<thumbprint>[=name] --skill NAME[=description] --expires 7d",
		Short: "Expose a sandbox to foreign A2A callers (patches spec.a2a)",
		Long: "expose patches the sandbox's spec.a2a as scenario 5 shows: the controller renders the router's\n" +
			"A2A port (reachable from the gateway only), the gateway route and the A2AExposed condition.\n" +
			"Windows are capped at 30 days. --dry-run asks the API server (server-side dry run) and prints the patch.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			patch, err := exposePatch(o, time.Now())
			if err != nil {
				return err
			}
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			var opts []client.PatchOption
			if o.dryRun {
				opts = append(opts, client.DryRunAll)
			}
			if err := cl.Patch(ctx, sb, client.RawPatch(types.MergePatchType, patch), opts...); err != nil {
				return fmt.Errorf("patch KarsSandbox %s/%s: %w", sb.Namespace, sb.Name, err)
			}
			out := cmd.OutOrStdout()
			if o.dryRun {
				fmt.Fprintf(out, "server-side dry run of KarsSandbox %s/%s accepted; nothing changed. The patch:\n%s\n", sb.Namespace, sb.Name, patch)
				return nil
			}
			fmt.Fprintf(out, "%s/%s: A2A exposure requested until %s; watch it with `kars a2a list-exposed` (A2AExposed turns True once the router serves)\n",
				sb.Namespace, sb.Name, sb.Spec.A2A.ExpiresAt.UTC().Format(time.RFC3339))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.callers, "caller", nil, "allowed caller: sha256:<RFC 7638 thumbprint of its card key>[=display name] (repeatable)")
	f.StringArrayVar(&o.skills, "skill", nil, "advertised skill: NAME[=description] (repeatable)")
	f.StringVar(&o.expires, "expires", "", "end of the exposure: a duration (7d, 36h) or an RFC 3339 time, at most 30 days ahead")
	f.IntVar(&o.minTrust, "min-trust", 500, "minimum caller trust score (0..1000)")
	f.IntVar(&o.rpm, "rpm", 30, "requests per minute per caller")
	f.IntVar(&o.burst, "burst", 5, "burst per caller")
	f.Int64Var(&o.bodyCap, "body-cap", 1<<20, "request body cap in bytes (at most 4 MiB)")
	f.IntVar(&o.session, "session-max", 60, "longest A2A session in seconds")
	f.BoolVar(&o.streaming, "streaming", false, "allow SendStreamingMessage and SubscribeToTask")
	f.BoolVar(&o.dryRun, "dry-run", false, "server-side dry run: validate and print, change nothing")
	return cmd
}

func newA2ARevokeCmd(c *cluster) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME",
		Short: "End a sandbox's A2A exposure now (spec.a2a.enabled: false)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			if err := cl.Patch(ctx, sb, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"a2a":{"enabled":false}}}`))); err != nil {
				return fmt.Errorf("patch KarsSandbox %s/%s: %w", sb.Namespace, sb.Name, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s/%s: A2A exposure revoked; the gateway stops routing as soon as the controller sees the change\n", sb.Namespace, sb.Name)
			return nil
		},
	}
}

func newA2AThumbprintCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "thumbprint FILE",
		Short: "Print the RFC 7638 thumbprint allowedCallers pins, from a caller's certificate, public key or signed card",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			tp, err := thumbprintOf(raw)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), tp)
			return nil
		},
	}
}

// thumbprintOf reads a PEM certificate or public key, or a signed card
// (whose signature must verify), and returns its key's thumbprint.
func thumbprintOf(raw []byte) (string, error) {
	if blk, _ := pem.Decode(raw); blk != nil {
		switch blk.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return "", err
			}
			return card.KeyThumbprint(c.PublicKey)
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				return "", err
			}
			return card.KeyThumbprint(k)
		}
		return "", fmt.Errorf("PEM block %q: want CERTIFICATE or PUBLIC KEY", blk.Type)
	}
	v, err := card.VerifyCard(raw, card.FromJWK)
	if err != nil {
		return "", fmt.Errorf("neither PEM nor a signed card: %w", err)
	}
	return v.Thumbprint, nil
}
