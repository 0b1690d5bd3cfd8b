package render

import "testing"

// Ports parsed from policy strings (egress actions, endpoint URLs) end up
// in a NetworkPolicy: whatever the string, the result is 0 (unknown) or a
// valid TCP port, never a panic.
func FuzzPorts(f *testing.F) {
	for _, s := range []string{"egress:api.github.com:443", "egress:*.x:*", "egress:h:0", "egress::65536", "https://a.b:8443/v1", "http://[::1]:80", "git@github.com:o/r.git", "ssh://h:2222/r", "http://h:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, p := range []int32{egressActionPort(s), urlPort(s), gitPort(s)} {
			if p < 0 || p > 65535 {
				t.Fatalf("%q gave port %d", s, p)
			}
		}
	})
}
