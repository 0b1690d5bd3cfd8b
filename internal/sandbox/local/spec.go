package local

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
)

// Contract UIDs of a sandbox pod (DESIGN.md): the agent never shares a UID
// with the router, whose files hold credentials.
const (
	AgentUID  = 1000
	RouterUID = 1001
	// RouterPort is where the router listens on 127.0.0.1 inside the pod
	// and the only place the agent may connect to.
	RouterPort = 8443
)

// Isolation levels, as in the KarsSandbox spec.
const (
	// Standard applies every layer the kernel offers and falls back (to
	// rootless, or without Landlock network rules on old kernels), saying
	// so in Pod.Guarantees.
	Standard = "standard"
	// Enhanced refuses to start unless every layer is in force: root mode,
	// network namespace with the egress guard, Landlock with network
	// rules, seccomp and cgroup limits.
	Enhanced = "enhanced"
	// Confidential needs confidential-computing nodes; the local substrate
	// cannot provide it and says so.
	Confidential = "confidential"
)

// ErrConfidentialUnsupported is returned for Isolation "confidential".
var ErrConfidentialUnsupported = errors.New("isolation \"confidential\" needs confidential-computing nodes (a Kubernetes cluster with confidential VMs); the local substrate cannot provide it: use \"standard\" or \"enhanced\" locally")

// Process describes one program of the pod.
type Process struct {
	// Path is the executable, an absolute host path. The agent sees the
	// host's root read-only, so host binaries run unchanged.
	Path string
	// Args are the arguments after argv[0].
	Args []string
	// Env is the complete environment (KEY=value). Nothing is inherited.
	Env []string
	// Dir is the working directory; defaults to /sandbox for the agent
	// and to the router's private directory for the router.
	Dir string
	// Files are placed before the process starts, keyed by a relative
	// path: for the agent inside its workspace (owner 1000, mode 0600), for
	// the router inside its private directory (owner 1001, mode 0600).
	Files map[string][]byte
}

// Limits are the agent's cgroup limits. Zero means unlimited.
type Limits struct {
	MemoryBytes int64
	// CPUMillis is CPU time per second of wall time, in thousandths of a
	// core (1000 = one core), like a Kubernetes CPU limit of "1".
	CPUMillis int64
	// PIDs caps tasks (processes and threads) in the agent's cgroup,
	// including the pod init's few threads.
	PIDs int64
}

// Spec is everything needed to realise one sandbox as a local pod.
type Spec struct {
	// ID names the pod: lowercase letters, digits and '-', at most 40
	// characters (it appears in nftables table and cgroup names).
	ID string
	// StateRoot is the directory holding one subdirectory per pod (its
	// state record, logs and the router's private files). It is hidden
	// from every agent. Pass the same root to CleanupStale.
	StateRoot string
	// Workspace is the host directory mounted read-write at /sandbox. It
	// defaults to <StateRoot>/<ID>/workspace.
	Workspace string
	// Isolation is Standard (default), Enhanced or Confidential.
	Isolation string
	// Router and Agent are the two programs of the pod.
	Router, Agent Process
	// RouterPorts are bound on 127.0.0.1 inside the pod before the router
	// starts and handed to it with the systemd socket-activation protocol
	// (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES set to the port numbers).
	// RouterPort is always first; add e.g. the admin port here.
	RouterPorts []uint16
	// AgentPorts are the TCP ports the agent may listen on (its chat
	// endpoint, e.g. 18789). Landlock denies binding any other port.
	AgentPorts []uint16
	// RouterWritable are further host paths the router may write (e.g. an
	// audit log directory outside the state root). It may always write its
	// private directory and /tmp; Landlock denies every other write, and
	// every read under the state root except its own directory.
	RouterWritable []string
	// Limits apply to the agent.
	Limits Limits
	// AddressPool is the private range pod links are carved from (one /30
	// per pod); default 10.213.0.0/16.
	AddressPool netip.Prefix
	// Hide are further host paths neither the agent nor the router may
	// read: the kars folders, other sandboxes' state and workspaces, home
	// directories (see HidePaths). The state root is always hidden.
	Hide []string
	// RouterState, when set, is a host folder the router keeps across pod
	// restarts (audit log, budget ledger, trust, quarantine, keys); the pod
	// never removes it. It appears in the router's directory at
	// RouterStateLink, a relative path.
	RouterState, RouterStateLink string
	// AgentRoot, when set, is a host directory (an unpacked container
	// image) that replaces the host's tree as the agent's root: its
	// top-level entries are bound read-only where the host's would be, and
	// Agent.Path names a program inside it. The router keeps the host's
	// tree. Hide does not apply to the agent then (nothing of the host is
	// there to hide).
	AgentRoot string
	// AgentCode, when set, is a host directory bound read-only (nosuid,
	// nodev) at AgentCodeMount in the agent's root: agent code unpacked
	// from an image.
	AgentCode string
	// WorkspaceQuota, when positive, bounds the workspace in bytes: it is
	// an ext4 image of that size loop-mounted at Workspace (root mode
	// only). Enhanced isolation fails to start without it; standard says
	// so in Guarantees.
	WorkspaceQuota int64
}

// AgentCodeMount is where Spec.AgentCode appears in the agent's root: a
// new top-level directory, because the host's (or the image's) tree is
// read-only below it.
const AgentCodeMount = "/agent-code"

var idPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)

// DefaultAddressPool is the range pod links are carved from by default.
var DefaultAddressPool = netip.MustParsePrefix("10.213.0.0/16")

// normalize validates s and fills defaults. Bad input changes nothing.
func (s Spec) normalize() (Spec, error) {
	if !idPattern.MatchString(s.ID) {
		return s, fmt.Errorf("local: pod ID %q: want lowercase letters, digits and '-', at most 40 characters", s.ID)
	}
	switch s.Isolation {
	case "":
		s.Isolation = Standard
	case Standard, Enhanced:
	case Confidential:
		return s, fmt.Errorf("local: pod %s: %w", s.ID, ErrConfidentialUnsupported)
	default:
		return s, fmt.Errorf("local: pod %s: unknown isolation %q (want standard, enhanced or confidential)", s.ID, s.Isolation)
	}
	if !filepath.IsAbs(s.StateRoot) {
		return s, fmt.Errorf("local: pod %s: StateRoot %q must be an absolute path", s.ID, s.StateRoot)
	}
	s.StateRoot = filepath.Clean(s.StateRoot)
	if s.Workspace == "" {
		s.Workspace = filepath.Join(s.StateRoot, s.ID, "workspace")
	} else if !filepath.IsAbs(s.Workspace) {
		return s, fmt.Errorf("local: pod %s: Workspace %q must be an absolute path", s.ID, s.Workspace)
	}
	for name, p := range map[string]Process{"router": s.Router, "agent": s.Agent} {
		if !filepath.IsAbs(p.Path) {
			return s, fmt.Errorf("local: pod %s: %s path %q must be absolute", s.ID, name, p.Path)
		}
		for rel := range p.Files {
			if !filepath.IsLocal(rel) {
				return s, fmt.Errorf("local: pod %s: %s file %q must be a relative path inside its directory", s.ID, name, rel)
			}
		}
	}
	for _, w := range append(slices.Clone(s.RouterWritable), s.Hide...) {
		if !filepath.IsAbs(w) {
			return s, fmt.Errorf("local: pod %s: path %q must be absolute", s.ID, w)
		}
	}
	if (s.RouterState == "") != (s.RouterStateLink == "") {
		return s, fmt.Errorf("local: pod %s: RouterState and RouterStateLink go together", s.ID)
	}
	if s.RouterState != "" && (!filepath.IsAbs(s.RouterState) || !filepath.IsLocal(s.RouterStateLink)) {
		return s, fmt.Errorf("local: pod %s: RouterState must be absolute and RouterStateLink a relative path inside the router's directory", s.ID)
	}
	for name, d := range map[string]string{"AgentRoot": s.AgentRoot, "AgentCode": s.AgentCode} {
		if d != "" && !filepath.IsAbs(d) {
			return s, fmt.Errorf("local: pod %s: %s %q must be an absolute path", s.ID, name, d)
		}
	}
	if s.WorkspaceQuota < 0 {
		return s, fmt.Errorf("local: pod %s: negative workspace quota", s.ID)
	}
	if s.Agent.Dir == "" {
		s.Agent.Dir = "/sandbox"
	}
	ports := []uint16{RouterPort}
	for _, p := range s.RouterPorts {
		if p == 0 {
			return s, fmt.Errorf("local: pod %s: router port 0", s.ID)
		}
		if p != RouterPort {
			ports = append(ports, p)
		}
	}
	s.RouterPorts = ports
	if !s.AddressPool.IsValid() {
		s.AddressPool = DefaultAddressPool
	}
	if !s.AddressPool.Addr().Is4() || s.AddressPool.Bits() > 29 {
		return s, fmt.Errorf("local: pod %s: address pool %s must be IPv4 and hold at least two /30s", s.ID, s.AddressPool)
	}
	if s.Limits.MemoryBytes < 0 || s.Limits.CPUMillis < 0 || s.Limits.PIDs < 0 {
		return s, fmt.Errorf("local: pod %s: negative limit %+v", s.ID, s.Limits)
	}
	return s, nil
}

// Guarantees says which isolation layers a pod actually has. The rootless
// fallback keeps some and loses others; callers surface this (kars status,
// the KarsSandbox conditions) instead of implying the full set.
type Guarantees struct {
	// Rootless is true when the pod runs in an unprivileged user namespace.
	Rootless bool
	// SeparateUIDs: agent and router run as different host UIDs (1000 and
	// 1001), so file modes alone keep the router's files from the agent.
	SeparateUIDs bool
	// NetworkNamespace: the agent has its own network stack.
	NetworkNamespace bool
	// EgressGuard: nftables owner rules confine the agent's UID to the
	// router port (and reject IPv6, UDP and instance metadata).
	EgressGuard bool
	// RouterEgressViaPodLink: the router's upstream traffic leaves through
	// the pod's veth and the host's NAT (false: it uses the host's stack).
	RouterEgressViaPodLink bool
	// Seccomp: the kars-strict filter is installed on the agent.
	Seccomp bool
	// LandlockFS / LandlockNet: Landlock filesystem rules, and TCP
	// bind/connect rules, are enforced on the agent.
	LandlockFS, LandlockNet bool
	// RouterLandlockFS: the router may read nothing under the state root
	// but its own directory and write only there (and RouterWritable);
	// all routers share UID 1001, so this keeps pods' credentials apart.
	RouterLandlockFS bool
	// LandlockABI is the kernel's Landlock ABI version (0: unavailable).
	LandlockABI int
	// ReadOnlyRoot: the agent's root is read-only with tmpfs /tmp, /run.
	ReadOnlyRoot bool
	// PIDNamespace: the agent cannot see host processes.
	PIDNamespace bool
	// CgroupLimits: Limits are enforced by cgroups (v1 or v2).
	CgroupLimits bool
	// NoNewPrivsNoCaps: no_new_privs set and every capability dropped,
	// bounding set included, for agent and router.
	NoNewPrivsNoCaps bool
	// WorkspaceQuota: the workspace is a size-bounded filesystem.
	WorkspaceQuota bool
	// Notes explain every guarantee that is not kept.
	Notes []string
}

// Missing lists the names of guarantees not kept.
func (g Guarantees) Missing() []string {
	var out []string
	for name, ok := range map[string]bool{
		"separate-uids": g.SeparateUIDs, "network-namespace": g.NetworkNamespace, "egress-guard": g.EgressGuard,
		"seccomp": g.Seccomp, "landlock-fs": g.LandlockFS, "landlock-net": g.LandlockNet,
		"router-landlock-fs": g.RouterLandlockFS,
		"read-only-root":     g.ReadOnlyRoot, "pid-namespace": g.PIDNamespace, "cgroup-limits": g.CgroupLimits,
		"no-new-privs-no-caps": g.NoNewPrivsNoCaps, "workspace-quota": g.WorkspaceQuota,
	} {
		if !ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
