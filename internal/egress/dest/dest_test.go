package dest

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestHost(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ip       bool
		err      error
	}{
		{in: "api.github.com", want: "api.github.com"},
		{in: "API.GitHub.COM.", want: "api.github.com"},
		{in: "_dmarc.example.org", want: "_dmarc.example.org"},
		{in: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{in: "localhost", want: "localhost"},
		{in: "10.0.0.1", want: "10.0.0.1", ip: true},
		{in: "[2001:db8::1]", want: "2001:db8::1", ip: true},
		{in: "2001:DB8::1", want: "2001:db8::1", ip: true},
		{in: "[::ffff:127.0.0.1]", want: "127.0.0.1", ip: true},
		{in: "", err: ErrEmpty},
		{in: ".", err: ErrEmpty},
		{in: "a..b", err: ErrLabel},
		{in: ".a", err: ErrLabel},
		{in: strings.Repeat("a", 64) + ".com", err: ErrLabel},
		{in: strings.Repeat("a.", 127) + "com", err: ErrTooLong},
		{in: "-a.com", err: ErrHyphen},
		{in: "a-.com", err: ErrHyphen},
		{in: "bücher.example", err: ErrByte},
		{in: "a b.com", err: ErrByte},
		{in: "a*.com", err: ErrByte},
		{in: "fe80::1%eth0", err: ErrByte},
		{in: "[10.0.0.1]", err: ErrByte},
		{in: "2130706433", err: ErrNumericTL},
		{in: "127.1", err: ErrNumericTL},
		{in: "010.0.0.1", err: ErrNumericTL},
		{in: "0x7f.0.0.1", err: ErrNumericTL},
	} {
		got, ip, err := Host(c.in)
		if !errors.Is(err, c.err) || got != c.want || ip != c.ip {
			t.Errorf("Host(%q) = %q, %v, %v; want %q, %v, %v", c.in, got, ip, err, c.want, c.ip, c.err)
		}
	}
}

func TestHostDoesNotAllocateWhenCanonical(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { Host("api.github.com") }); n != 0 {
		t.Errorf("Host allocates %v times for a canonical name", n)
	}
}

func TestRefused(t *testing.T) {
	for _, c := range []struct {
		addr string
		want string
	}{
		{"169.254.169.254", "the cloud instance-metadata endpoint"},
		{"::ffff:169.254.169.254", "the cloud instance-metadata endpoint"},
		{"10.1.2.3", "a private address"},
		{"172.31.255.255", "a private address"},
		{"192.168.1.1", "a private address"},
		{"100.64.0.1", "a carrier-grade NAT (CGNAT) address"},
		{"127.0.0.53", "a loopback address"},
		{"169.254.1.1", "a link-local address"},
		{"0.0.0.0", "the unspecified network"},
		{"::1", "a loopback address"},
		{"fd12::1", "a private (unique local) address"},
		{"64:ff9b::a00:1", "a NAT64 address (it embeds an IPv4 address)"},
		{"224.0.0.1", "a multicast address"},
		{"140.82.112.3", ""},
		{"198.51.100.10", ""},
		{"2606:50c0:8000::154", ""},
		{"172.32.0.1", ""},
	} {
		if got := Refused(netip.MustParseAddr(c.addr)); got != c.want {
			t.Errorf("Refused(%s) = %q, want %q", c.addr, got, c.want)
		}
	}
	if Refused(netip.Addr{}) == "" {
		t.Error("the zero address must be refused")
	}
}

func TestParent(t *testing.T) {
	h := "a.b.example.com"
	var got []string
	for p, ok := h, true; ok; p, ok = Parent(p) {
		got = append(got, p)
	}
	if strings.Join(got, " ") != "a.b.example.com b.example.com example.com com" {
		t.Errorf("parents: %v", got)
	}
}

func FuzzHost(f *testing.F) {
	for _, s := range []string{"api.github.com", "API.GitHub.COM.", "[::1]", "10.0.0.1", "2130706433", "a..b", "xn--bcher-kva.example", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, ip, err := Host(s)
		if err != nil {
			return
		}
		// Canonical means a fixed point: a second pass changes nothing.
		h2, ip2, err := Host(h)
		if err != nil || h2 != h || ip2 != ip {
			t.Fatalf("Host(%q) = %q; Host of that = %q, %v, %v", s, h, h2, ip2, err)
		}
		if ip {
			if _, err := netip.ParseAddr(h); err != nil {
				t.Fatalf("Host(%q) says IP but %q does not parse: %v", s, h, err)
			}
			return
		}
		if h != strings.ToLower(h) || len(h) > MaxHostLen || strings.HasSuffix(h, ".") {
			t.Fatalf("Host(%q) = %q is not canonical", s, h)
		}
	})
}
