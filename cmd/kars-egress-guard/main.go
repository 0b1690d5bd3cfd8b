// Command kars-egress-guard installs the agent egress guard in the current
// network namespace and exits. In Kubernetes it is the sandbox pod's init
// container (capabilities NET_ADMIN and NET_RAW only): it runs in the pod's
// network namespace before the agent and router start, and the rules it
// leaves behind outlive it.
//
// Usage:
//
//	kars-egress-guard [--agent-uid 1000] [--router-port 8443] [--dns 10.96.0.10] [--print]
//
// Every flag can also be given as an environment variable (KARS_AGENT_UID,
// KARS_ROUTER_PORT, KARS_DNS); flags win. Running it again replaces the kars
// table, so a restarted init container converges to the same rules.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/kars-io/kars/internal/egress"
)

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kars-egress-guard:", err)
		os.Exit(1)
	}
}

func run(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("kars-egress-guard", flag.ContinueOnError)
	uid := fs.Uint("agent-uid", envUint(getenv, "KARS_AGENT_UID", egress.DefaultAgentUID), "UID of the agent process whose egress is confined (env KARS_AGENT_UID)")
	port := fs.Uint("router-port", envUint(getenv, "KARS_ROUTER_PORT", egress.DefaultRouterPort), "TCP port of the router on 127.0.0.1 (env KARS_ROUTER_PORT)")
	dns := fs.String("dns", getenv("KARS_DNS"), "comma-separated resolver IPs the agent may query on port 53, e.g. the cluster DNS service IP (env KARS_DNS)")
	printOnly := fs.Bool("print", false, "print the rules in nft syntax and exit without installing them")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *uid > 1<<32-1 || *port == 0 || *port > 65535 {
		return fmt.Errorf("agent UID %d or router port %d out of range", *uid, *port)
	}
	p := egress.Policy{AgentUID: uint32(*uid), RouterPort: uint16(*port)}
	for _, s := range strings.Split(*dns, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("--dns %q: %w", s, err)
		}
		p.DNS = append(p.DNS, a)
	}
	rules, err := egress.Rules(p)
	if err != nil {
		return err
	}
	if *printOnly {
		fmt.Fprintf(stdout, "table inet %s {\n  chain output {\n    type filter hook output priority filter; policy accept;\n", egress.TableName)
		for _, r := range rules {
			fmt.Fprintf(stdout, "    %s\n", r)
		}
		fmt.Fprintln(stdout, "  }\n}")
		return nil
	}
	if err := egress.Apply(-1, rules); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kars-egress-guard: %d rules installed for uid %d (router 127.0.0.1:%d, dns %v)\n", len(rules), p.AgentUID, p.RouterPort, p.DNS)
	return nil
}

// envUint reads a numeric default from the environment; a malformed value
// becomes an impossible one so that run rejects it instead of ignoring it.
func envUint(getenv func(string) string, key string, def uint) uint {
	v := getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0
	}
	return uint(n)
}
