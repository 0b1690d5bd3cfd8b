package render

import (
	"encoding/json"
	"path"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/egress"
	"github.com/kars-io/kars/internal/routerconfig"
)

// Egress listeners of the router, where the egress guard redirects the
// agent's connections and DNS (egress.DefaultTransparentPort, DNSPort).
var (
	RouterTransparentListen = "127.0.0.1:" + strconv.Itoa(egress.DefaultTransparentPort)
	RouterDNSListen         = "127.0.0.1:" + strconv.Itoa(egress.DefaultDNSPort)
)

// egressConfig compiles the sandbox's egress spec into router.json: the mode,
// allowedHosts (each on port 443), and the router's transparent and DNS
// listeners. What changes apart from the spec goes to egressState.
func egressConfig(sb *karsv1.KarsSandbox) *routerconfig.Egress {
	np := sb.Spec.NetworkPolicy
	e := &routerconfig.Egress{Mode: routerconfig.EgressStrict, TransparentListen: RouterTransparentListen, DNSListen: RouterDNSListen}
	if np.EgressMode == karsv1.EgressLearn {
		e.Mode = routerconfig.EgressLearn
	}
	for _, h := range np.AllowedHosts {
		e.AllowedHosts = append(e.AllowedHosts, string(h))
	}
	return e
}

// egressState is the router ConfigMap's egress.json: the verified
// allowlist, the active approvals and the installation's blocklist.
func egressState(in Input) string {
	st := routerconfig.EgressState{Allowlist: in.Egress.Allowlist, Approvals: in.Egress.Approvals, Blocklist: in.Env.Blocklist}
	if cm := in.Env.BlocklistConfigMap; cm != nil {
		bl := routerconfig.Blocklist{}
		if st.Blocklist != nil {
			bl = *st.Blocklist
			bl.Sources = slices.Clone(bl.Sources)
		}
		bl.Sources = append(bl.Sources, routerconfig.BlocklistSource{File: path.Join(RouterBlocklistDir, cm.Key), Name: "configmap:" + cm.Name + "/" + cm.Key})
		st.Blocklist = &bl
	}
	b, _ := json.Marshal(st)
	return string(b)
}

// RouterBlocklistDir is where the blocklist ConfigMap is mounted in the
// router container.
const RouterBlocklistDir = "/etc/kars/blocklist"

const volBlocklist = "egress-blocklist"

// blocklistVolume mounts Environment.BlocklistConfigMap, optional: a
// namespace without it leaves the source failing, and the router failing
// closed until it appears (docs/egress.md).
func blocklistVolume(env Environment) (*corev1.Volume, *corev1.VolumeMount) {
	cm := env.BlocklistConfigMap
	if cm == nil {
		return nil, nil
	}
	return &corev1.Volume{Name: volBlocklist, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: cm.Name}, Optional: ptr(true),
			Items: []corev1.KeyToPath{{Key: cm.Key, Path: cm.Key}}, DefaultMode: ptr(int32(0o444))}}},
		&corev1.VolumeMount{Name: volBlocklist, MountPath: RouterBlocklistDir, ReadOnly: true}
}

// egressPorts are the TCP ports the router needs toward egress
// destinations: 443 for allowedHosts, the ports of allowlist entries and
// approvals, and all ports (nil, true) in Learn mode or for an entry
// allowing any port.
func egressPorts(in Input) (ports []int32, all bool) {
	np := in.Sandbox.Spec.NetworkPolicy
	if np.EgressMode == karsv1.EgressLearn {
		return nil, true
	}
	if len(np.AllowedHosts) > 0 {
		ports = append(ports, 443)
	}
	var hosts []string
	if a := in.Egress.Allowlist; a != nil {
		hosts = append(hosts, a.Hosts...)
	}
	for _, a := range in.Egress.Approvals {
		if len(a.Ports) == 0 {
			ports = append(ports, 443)
		}
		ports = append(ports, a.Ports...)
		hosts = append(hosts, a.Hosts...)
	}
	for _, h := range hosts {
		p, any := hostPort(h)
		if any {
			return nil, true
		}
		if p != 0 {
			ports = append(ports, p)
		}
	}
	return ports, false
}

// hostPort returns the port of an allowlist entry, 443 when it has none,
// and whether it allows any port.
func hostPort(entry string) (int32, bool) {
	for i := len(entry) - 1; i >= 0 && entry[i] != ']' && entry[i] != '.'; i-- {
		if entry[i] != ':' {
			continue
		}
		if entry[i+1:] == "*" {
			return 0, true
		}
		n, err := strconv.ParseUint(entry[i+1:], 10, 16)
		if err != nil {
			return 0, false
		}
		return int32(n), false
	}
	return 443, false
}
