package egress

import (
	"net/netip"
	"testing"
)

func TestClassify(t *testing.T) {
	rules, err := Rules(DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		uid   uint32
		proto Proto
		dst   string
		want  string
	}{
		{1000, TCP, "198.51.100.10:443", "redirected"},
		{1000, TCP, "198.51.100.10:8443", "redirected"},
		{1000, UDP, "10.255.255.53:53", "redirected"},
		{1000, TCP, "10.255.255.53:53", "redirected"},
		{1000, TCP, "127.0.0.1:8443", "accepted"},
		{1000, TCP, "127.0.0.1:9090", "refused"},
		{1000, TCP, "169.254.169.254:80", "refused"},
		{1000, UDP, "198.51.100.10:443", "refused"},
		{1000, TCP, "[2001:db8::1]:443", "refused"},
		{1001, TCP, "198.51.100.10:443", "accepted"},
	} {
		got := Classify(rules, c.uid, c.proto, netip.MustParseAddrPort(c.dst))
		if got.Verdict != c.want {
			t.Errorf("uid %d %v %s: %+v, want %s", c.uid, c.proto, c.dst, got, c.want)
		}
	}
	if o := Classify(rules, 1000, TCP, netip.MustParseAddrPort("198.51.100.10:443")); o.To.Port() != DefaultTransparentPort {
		t.Errorf("redirect target %s", o.To)
	}
	if o := Classify(rules, 1000, TCP, netip.MustParseAddrPort("169.254.169.254:80")); o.Rule != "no instance metadata" {
		t.Errorf("metadata rule %q", o.Rule)
	}
}
