package egress

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRules(t *testing.T) {
	base := []string{
		`meta skuid 1000 ip daddr 169.254.169.254 meta l4proto tcp reject with tcp reset comment "no instance metadata"`,
		`meta skuid 1000 ip daddr 169.254.169.254 reject with icmpx admin-prohibited comment "no instance metadata"`,
		`meta skuid 1000 ct state established,related accept comment "replies on accepted and allowed connections"`,
		`meta skuid 1000 oifname "lo" ip daddr 127.0.0.1 tcp dport 8443 accept comment "the router"`,
	}
	tail := []string{
		`meta skuid 1000 meta nfproto ipv6 meta l4proto tcp reject with tcp reset comment "no IPv6"`,
		`meta skuid 1000 meta nfproto ipv6 reject with icmpx admin-prohibited comment "no IPv6"`,
		`meta skuid 1000 meta l4proto tcp reject with tcp reset comment "everything else"`,
		`meta skuid 1000 reject with icmpx admin-prohibited comment "everything else"`,
	}
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name    string
		policy  Policy
		want    []string
		wantErr string
	}{
		{name: "router only", policy: Policy{AgentUID: 1000, RouterPort: 8443}, want: cat(base, tail)},
		{
			name:   "contract default: redirects to the router, DNS to its stub, inbound closed",
			policy: DefaultPolicy(),
			want: cat([]string{
				`meta skuid 1000 meta nfproto ipv4 udp dport 53 redirect to :15053 comment "DNS goes to the router's stub"`,
				`meta skuid 1000 meta nfproto ipv4 tcp dport 53 redirect to :15053 comment "DNS goes to the router's stub"`,
				`meta skuid 1000 ip daddr != 127.0.0.0/8 ip daddr != 169.254.169.254 meta l4proto tcp redirect to :15001 comment "every other connection goes to the router's transparent proxy"`,
			}, base, []string{
				`meta skuid 1000 ip daddr 127.0.0.1 tcp dport 15001 accept comment "redirected to the router's transparent proxy"`,
				`meta skuid 1000 ip daddr 127.0.0.1 udp dport 15053 accept comment "redirected to the router's DNS stub"`,
				`meta skuid 1000 ip daddr 127.0.0.1 tcp dport 15053 accept comment "redirected to the router's DNS stub"`,
			}, tail, []string{
				`iifname "lo" accept comment "inside the pod"`,
				`ct state established,related accept comment "replies"`,
				`meta l4proto icmp accept comment "ICMP and neighbour discovery"`,
				`meta l4proto ipv6-icmp accept comment "ICMP and neighbour discovery"`,
				`meta l4proto tcp reject with tcp reset comment "nothing else reaches the pod"`,
				`reject with icmpx admin-prohibited comment "nothing else reaches the pod"`,
			}),
		},
		{
			name:   "cluster: admin and A2A ports open inbound",
			policy: Policy{AgentUID: 1000, RouterPort: 8443, Inbound: true, InboundPorts: []uint16{8444, 8445}},
			want: cat(base, tail, []string{
				`iifname "lo" accept comment "inside the pod"`,
				`ct state established,related accept comment "replies"`,
				`meta l4proto icmp accept comment "ICMP and neighbour discovery"`,
				`meta l4proto ipv6-icmp accept comment "ICMP and neighbour discovery"`,
				`tcp dport 8444 accept comment "router port open to the cluster"`,
				`tcp dport 8445 accept comment "router port open to the cluster"`,
				`meta l4proto tcp reject with tcp reset comment "nothing else reaches the pod"`,
				`reject with icmpx admin-prohibited comment "nothing else reaches the pod"`,
			}),
		},
		{name: "resolvers and the DNS stub exclude each other", policy: Policy{AgentUID: 1000, RouterPort: 8443, DNSPort: 15053,
			DNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}, wantErr: "exclude each other"},
		{
			name:   "cluster DNS allowed on 53 before the catch-all",
			policy: Policy{AgentUID: 1000, RouterPort: 8443, DNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")}},
			want: cat(base, []string{
				`meta skuid 1000 ip daddr 10.96.0.10 udp dport 53 accept comment "cluster DNS"`,
				`meta skuid 1000 ip daddr 10.96.0.10 tcp dport 53 accept comment "cluster DNS"`,
			}, tail),
		},
		{
			name:   "IPv6 cluster DNS is allowed ahead of the IPv6 rejection",
			policy: Policy{AgentUID: 1000, RouterPort: 8443, DNS: []netip.Addr{netip.MustParseAddr("fd00::a")}},
			want: cat(base, []string{
				`meta skuid 1000 ip6 daddr fd00::a udp dport 53 accept comment "cluster DNS"`,
				`meta skuid 1000 ip6 daddr fd00::a tcp dport 53 accept comment "cluster DNS"`,
			}, tail),
		},
		{
			name:   "custom UID and port",
			policy: Policy{AgentUID: 2000, RouterPort: 9443},
			want: func() []string {
				var out []string
				for _, l := range cat(base, tail) {
					l = strings.ReplaceAll(l, "skuid 1000", "skuid 2000")
					out = append(out, strings.ReplaceAll(l, "dport 8443", "dport 9443"))
				}
				return out
			}(),
		},
		{name: "router port required", policy: Policy{AgentUID: 1000}, wantErr: "router port"},
		{name: "invalid DNS", policy: Policy{AgentUID: 1000, RouterPort: 8443, DNS: []netip.Addr{{}}}, wantErr: "invalid DNS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := Rules(tt.policy)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rules {
				got = append(got, r.String())
				if _, err := r.exprs(); err != nil {
					t.Errorf("%s: %v", r, err)
				}
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestRuleExprsRejectsInconsistentRules(t *testing.T) {
	bad := []Rule{
		{UID: 1, Dport: 80},
		{UID: 1, Verdict: RejectReset},
		{UID: 1, Family: IPv4, Daddr: netip.MustParseAddr("::1")},
		{UID: 1, Daddr: netip.MustParseAddr("10.0.0.1")},
		{UID: 1, OutIface: "a-name-longer-than-ifnamsiz"},
		{Chain: ChainNAT, UID: 1, Proto: TCP, Verdict: Accept},
		{Chain: ChainOutput, UID: 1, Proto: TCP, Verdict: Redirect, RedirectPort: 1},
		{Chain: ChainNAT, UID: 1, Verdict: Redirect, RedirectPort: 1},
		{Chain: ChainNAT, UID: 1, Family: IPv6, Proto: TCP, NotDaddr: []netip.Prefix{netip.MustParsePrefix("::1/128")}, Verdict: Redirect, RedirectPort: 1},
	}
	for _, r := range bad {
		if _, err := r.exprs(); err == nil {
			t.Errorf("%s: want an error", r)
		}
	}
}
