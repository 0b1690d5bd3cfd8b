// Command kars-egress-guard installs the agent egress guard in the current
// network namespace and exits. In Kubernetes it is the sandbox pod's init
// container (capabilities NET_ADMIN and NET_RAW only): it runs in the pod's
// network namespace before the agent and router start, and the rules it
// leaves behind outlive it.
//
// Usage:
//
//	kars-egress-guard [--agent-uid 1000] [--router-port 8443]
//	    [--transparent-port 15001] [--dns-port 15053] [--inbound-ports 8444,8445]
//	    [--dns 10.96.0.10] [--print]
//
// --transparent-port redirects the agent's TCP connections to the router's
// transparent proxy, --dns-port its DNS to the router's DNS stub (0 turns
// either off), --inbound-ports closes the pod to inbound connections but
// on those ports ("none": closed entirely; empty: no input chain). --dns
// lets the agent query resolvers directly and cannot be combined with
// --dns-port.
//
// Every flag can also be given as an environment variable (KARS_AGENT_UID,
// KARS_ROUTER_PORT, KARS_TRANSPARENT_PORT, KARS_DNS_PORT,
// KARS_INBOUND_PORTS, KARS_DNS); flags win. Running it again replaces the
// kars table, so a restarted init container converges to the same rules.
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
	dns := fs.String("dns", getenv("KARS_DNS"), "comma-separated resolver IPs the agent may query directly on port 53 (env KARS_DNS); excludes --dns-port")
	transparent := fs.Uint("transparent-port", envUint(getenv, "KARS_TRANSPARENT_PORT", 0), "redirect the agent's TCP to the router's transparent proxy on this loopback port; 0: off (env KARS_TRANSPARENT_PORT)")
	dnsPort := fs.Uint("dns-port", envUint(getenv, "KARS_DNS_PORT", 0), "redirect the agent's DNS to the router's stub on this loopback port; 0: off (env KARS_DNS_PORT)")
	inbound := fs.String("inbound-ports", getenv("KARS_INBOUND_PORTS"), "close the pod to inbound connections except on these TCP ports (comma-separated, or \"none\"); empty: no input chain (env KARS_INBOUND_PORTS)")
	printOnly := fs.Bool("print", false, "print the rules in nft syntax and exit without installing them")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *uid > 1<<32-1 || *port == 0 || *port > 65535 || *transparent > 65535 || *dnsPort > 65535 {
		return fmt.Errorf("agent UID %d or a port (%d, %d, %d) out of range", *uid, *port, *transparent, *dnsPort)
	}
	p := egress.Policy{AgentUID: uint32(*uid), RouterPort: uint16(*port), TransparentPort: uint16(*transparent), DNSPort: uint16(*dnsPort)}
	if s := strings.TrimSpace(*inbound); s != "" {
		p.Inbound = true
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f == "" || f == "none" {
				continue
			}
			n, err := strconv.ParseUint(f, 10, 16)
			if err != nil || n == 0 {
				return fmt.Errorf("--inbound-ports %q: %q is not a port", s, f)
			}
			p.InboundPorts = append(p.InboundPorts, uint16(n))
		}
	}
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
		fmt.Fprintf(stdout, "table inet %s {\n", egress.TableName)
		for _, ch := range []struct {
			c    egress.Chain
			head string
		}{
			{egress.ChainNAT, "chain nat_output {\n    type nat hook output priority dstnat; policy accept;"},
			{egress.ChainOutput, "chain output {\n    type filter hook output priority filter; policy accept;"},
			{egress.ChainInput, "chain input {\n    type filter hook input priority filter; policy accept;"},
		} {
			n := 0
			for _, r := range rules {
				if r.Chain != ch.c {
					continue
				}
				if n == 0 {
					fmt.Fprintf(stdout, "  %s\n", ch.head)
				}
				n++
				fmt.Fprintf(stdout, "    %s\n", r)
			}
			if n > 0 {
				fmt.Fprintln(stdout, "  }")
			}
		}
		fmt.Fprintln(stdout, "}")
		return nil
	}
	if err := egress.Apply(-1, rules); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kars-egress-guard: %d rules installed for uid %d (router 127.0.0.1:%d, transparent :%d, dns stub :%d, dns %v, inbound %v %v)\n",
		len(rules), p.AgentUID, p.RouterPort, p.TransparentPort, p.DNSPort, p.DNS, p.Inbound, p.InboundPorts)
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
