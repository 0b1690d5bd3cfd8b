package render

import (
	"slices"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/routerconfig"
)

func TestEgressRendering(t *testing.T) {
	sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)
	sb.Spec.NetworkPolicy.AllowedHosts = []karsv1.Hostname{"api.github.com", "*.githubusercontent.com"}
	in := input(sb)
	in.Env.Blocklist = &routerconfig.Blocklist{Sources: []routerconfig.BlocklistSource{{URL: "https://lists.example.org/block.txt"}}, Refresh: "1h"}
	in.Env.BlocklistConfigMap = &ConfigMapKey{Name: "kars-blocklist", Key: "blocklist.txt"}
	exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	in.Egress = EgressInput{
		Allowlist: &routerconfig.EgressAllowlist{Ref: "r/p@sha256:" + sixtyFour, Digest: "sha256:" + sixtyFour, Hosts: []string{"ssh.example.com:22"}},
		Approvals: []routerconfig.EgressApproval{{Name: "a", UID: "u", Hosts: []string{"x.example.com"}, Ports: []int32{8443}, ExpiresAt: exp}},
	}
	d, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	eg := d.Config.Egress
	if eg.Mode != routerconfig.EgressStrict || !slices.Equal(eg.AllowedHosts, []string{"api.github.com", "*.githubusercontent.com"}) ||
		eg.TransparentListen != "127.0.0.1:15001" || eg.DNSListen != "127.0.0.1:15053" {
		t.Errorf("router.json egress %+v", eg)
	}
	st, err := routerconfig.ParseEgressState([]byte(d.RouterConfig.Data[routerconfig.EgressStateFile]))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Blocklist.Sources) != 2 || st.Blocklist.Sources[1].File != "/etc/kars/blocklist/blocklist.txt" || st.Blocklist.Refresh != "1h" ||
		st.Allowlist.Hosts[0] != "ssh.example.com:22" || !st.Approvals[0].ExpiresAt.Equal(exp) {
		t.Errorf("egress.json %+v", st)
	}
	// The state is not part of the config digest: approvals come and go
	// without disturbing the RouterEnforcing handshake.
	in2 := in
	in2.Egress = EgressInput{}
	d2, err := Render(in2)
	if err != nil {
		t.Fatal(err)
	}
	if d2.ConfigDigest != d.ConfigDigest {
		t.Error("the egress state changed the config digest")
	}
	// The router mounts the blocklist ConfigMap, optional.
	pod := d.Deployment.Spec.Template.Spec
	var mounted, optional bool
	for _, c := range pod.Containers {
		for _, m := range c.VolumeMounts {
			if c.Name == ContainerRouter && m.MountPath == RouterBlocklistDir {
				mounted = true
			}
		}
	}
	for _, v := range pod.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == "kars-blocklist" && *v.ConfigMap.Optional {
			optional = true
		}
	}
	if !mounted || !optional {
		t.Errorf("blocklist ConfigMap mounted %v, optional %v", mounted, optional)
	}
	// The guard redirects to the router and closes inbound but the admin port.
	env := map[string]string{}
	for _, e := range pod.InitContainers[0].Env {
		env[e.Name] = e.Value
	}
	if env["KARS_TRANSPARENT_PORT"] != "15001" || env["KARS_DNS_PORT"] != "15053" || env["KARS_INBOUND_PORTS"] != "8444" || env["KARS_DNS"] != "" {
		t.Errorf("guard env %v", env)
	}
	// NetworkPolicy: the lists' ports (443, 22, 8443), not every port.
	if ports := egressRulePorts(d.NetworkPolicy); !slices.Contains(ports, 22) || !slices.Contains(ports, 8443) || !slices.Contains(ports, 443) || slices.Contains(ports, 0) {
		t.Errorf("NetworkPolicy ports %v", ports)
	}
	// Learn mode opens every port to the router (it decides them).
	sb.Spec.NetworkPolicy.EgressMode = karsv1.EgressLearn
	d3, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	if d3.Config.Egress.Mode != routerconfig.EgressLearn || !slices.Contains(egressRulePorts(d3.NetworkPolicy), 0) {
		t.Errorf("Learn: mode %s, ports %v", d3.Config.Egress.Mode, egressRulePorts(d3.NetworkPolicy))
	}
}

const sixtyFour = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// egressRulePorts lists the TCP ports of the upstream rule (0 for a rule
// without a port: all ports).
func egressRulePorts(np *networkingv1.NetworkPolicy) []int32 {
	var out []int32
	for _, r := range np.Spec.Egress {
		if len(r.To) == 0 || r.To[0].IPBlock == nil || r.To[0].IPBlock.CIDR != "0.0.0.0/0" {
			continue
		}
		for _, p := range r.Ports {
			if p.Port == nil {
				out = append(out, 0)
			} else {
				out = append(out, p.Port.IntVal)
			}
		}
	}
	return out
}
