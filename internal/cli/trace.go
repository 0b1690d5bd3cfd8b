package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/egress"
	"github.com/kars-io/kars/internal/egress/trace"
	"github.com/kars-io/kars/internal/localsubstrate"
)

func newTraceCmd(c *cluster) *cobra.Command {
	var network, asJSON bool
	var recent int
	cmd := &cobra.Command{
		Use:   "trace NAME --network",
		Short: "Watch a sandbox's connection attempts live",
		Long: "trace --network shows what the sandbox's agent tries to reach: the router's decisions\n" +
			"(allowed or denied, by which rule; DNS answers) from its admin API, and — under kars dev,\n" +
			"as root — every connect() and UDP send of the agent's UID seen by an eBPF program on the\n" +
			"cgroup hooks, with the process and what the egress guard did with it (redirected to the\n" +
			"router, or refused by the kernel). On a cluster the kernel view needs a process on the\n" +
			"node; trace then shows the router's view only. Ctrl-C stops.",
		Example: "  kars trace research-bot --network\n  kars trace research-bot --network --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !network {
				return errors.New("say what to trace: --network (the only view so far)")
			}
			ctx := cmd.Context()
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			p := &tracePrinter{out: cmd.OutOrStdout(), json: asJSON}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var wg sync.WaitGroup
			errc := make(chan error, 2)
			if _, dev := c.kubeconfigPath(); dev {
				stop, err := kernelTrace(ctx, sb, p, &wg)
				if err != nil {
					p.note("kernel view unavailable: " + err.Error())
				} else {
					defer stop()
				}
			} else {
				p.note("kernel view: runs on the node, not from here; showing the router's decisions")
			}
			wg.Go(func() { errc <- c.routerTrace(ctx, cl, sb, recent, p) })
			select {
			case <-ctx.Done():
			case err := <-errc:
				cancel()
				wg.Wait()
				return err
			}
			wg.Wait()
			return nil
		},
	}
	cmd.Flags().BoolVar(&network, "network", false, "trace network connection attempts")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line")
	cmd.Flags().IntVar(&recent, "recent", 20, "router decisions from before the trace started to show first")
	return cmd
}

// tracePrinter writes trace lines, one writer at a time.
type tracePrinter struct {
	mu   sync.Mutex
	out  io.Writer
	json bool
}

type traceLine struct {
	Time    time.Time `json:"time"`
	Source  string    `json:"source"` // router, kernel, kars
	Kind    string    `json:"kind,omitempty"`
	PID     uint32    `json:"pid,omitempty"`
	Comm    string    `json:"comm,omitempty"`
	Proto   string    `json:"proto,omitempty"`
	Dest    string    `json:"dest,omitempty"`
	Via     string    `json:"via,omitempty"`
	Verdict string    `json:"verdict,omitempty"`
	Rule    string    `json:"rule,omitempty"`
	Detail  string    `json:"detail,omitempty"`
}

func (p *tracePrinter) line(l traceLine) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		b, _ := json.Marshal(l)
		fmt.Fprintln(p.out, string(b))
		return
	}
	switch l.Source {
	case "kernel":
		fmt.Fprintf(p.out, "%s kernel %-6s pid=%d %-12s %s %s\n", l.Time.Format("15:04:05.000"), l.Verdict, l.PID, l.Comm, l.Proto, l.Dest+" → "+l.Detail)
	case "router":
		fmt.Fprintf(p.out, "%s router %-6s %-4s %s %s (rule %s) %s\n", l.Time.Format("15:04:05.000"), l.Verdict, l.Kind, l.Dest, l.Via, l.Rule, l.Detail)
	default:
		fmt.Fprintf(p.out, "# %s\n", l.Detail)
	}
}

func (p *tracePrinter) note(s string) { p.line(traceLine{Time: time.Now(), Source: "kars", Detail: s}) }

// routerTrace follows the router's egress events.
func (c *cluster) routerTrace(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, recent int, p *tracePrinter) error {
	ep, err := c.adminEndpoint(ctx, cl, sb)
	if err != nil {
		return err
	}
	defer ep.close()
	ep.http.Timeout = 0
	resp, err := ep.do(ctx, http.MethodGet, fmt.Sprintf("/admin/v1/egress/events?follow=1&n=%d", recent), nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("router of %s: %w", sb.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("router of %s answered %s: %s", sb.Name, resp.Status, strings.TrimSpace(string(b)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev struct {
			Time    time.Time `json:"time"`
			Kind    string    `json:"kind"`
			Host    string    `json:"host"`
			Port    uint16    `json:"port"`
			Via     string    `json:"via"`
			OrigDst string    `json:"origDst"`
			Verdict string    `json:"verdict"`
			Step    string    `json:"step"`
			Rule    string    `json:"rule"`
			Reason  string    `json:"reason"`
			DNSType string    `json:"dnsType"`
			RCode   string    `json:"rcode"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		l := traceLine{Time: ev.Time, Source: "router", Kind: ev.Kind, Verdict: ev.Verdict, Rule: ev.Rule, Via: ev.Via, Dest: ev.Host}
		if ev.Port != 0 {
			l.Dest = fmt.Sprintf("%s:%d", ev.Host, ev.Port)
		}
		if ev.Kind == "dns" {
			l.Via, l.Detail = ev.DNSType, ev.RCode
		} else if ev.Verdict != "allow" {
			l.Detail = ev.Reason
		}
		p.line(l)
	}
	if ctx.Err() != nil {
		return nil
	}
	return sc.Err()
}

// kernelTrace attaches the eBPF observer for the sandbox's local pod.
func kernelTrace(ctx context.Context, sb *karsv1.KarsSandbox, p *tracePrinter, wg *sync.WaitGroup) (func(), error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("eBPF needs root: run kars trace as root (as kars dev runs)")
	}
	state := filepath.Join(devenv.DefaultPaths().Sandboxes(), localsubstrate.PodID(sb), "state.json")
	raw, err := os.ReadFile(state)
	if err != nil {
		return nil, fmt.Errorf("the sandbox's local pod: %w", err)
	}
	var st struct {
		NetnsCookie uint64 `json:"netnsCookie"`
	}
	if err := json.Unmarshal(raw, &st); err != nil || st.NetnsCookie == 0 {
		return nil, fmt.Errorf("%s names no network namespace (a rootless pod has no egress guard to trace)", state)
	}
	root, err := trace.CgroupV2Root()
	if err != nil {
		return nil, err
	}
	tr, err := trace.Attach(root)
	if err != nil {
		return nil, err
	}
	rules, err := egress.Rules(egress.DefaultPolicy())
	if err != nil {
		tr.Close()
		return nil, err
	}
	p.note(fmt.Sprintf("kernel view: eBPF on cgroup connect4/sendmsg4 (%s), pod netns cookie %d, uid %d", root, st.NetnsCookie, egress.DefaultAgentUID))
	wg.Go(func() {
		tr.Run(ctx, func(a trace.Attempt) {
			if a.Netns != st.NetnsCookie || a.UID != egress.DefaultAgentUID {
				return
			}
			proto := egress.TCP
			if a.Proto == "udp" {
				proto = egress.UDP
			}
			o := egress.Classify(rules, a.UID, proto, a.Dst)
			p.line(traceLine{Time: a.Time, Source: "kernel", PID: a.PID, Comm: a.Comm, Proto: a.Proto, Dest: a.Dst.String(),
				Verdict: o.Verdict, Rule: o.Rule, Detail: o.String()})
		})
	})
	return func() { tr.Close() }, nil
}
