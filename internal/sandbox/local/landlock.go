package local

import (
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsyscall "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

const (
	accessRead  = landlock.AccessFSSet(llsyscall.AccessFSExecute | llsyscall.AccessFSReadFile | llsyscall.AccessFSReadDir)
	accessFileR = landlock.AccessFSSet(llsyscall.AccessFSExecute | llsyscall.AccessFSReadFile)
)

// landlockABI returns the kernel's Landlock ABI version, 0 if none.
func landlockABI() int {
	v, err := llsyscall.LandlockGetABIVersion()
	if err != nil {
		return 0
	}
	return v
}

// landlockRules is the agent's Landlock policy, evaluated inside the new
// root: read and execute everywhere except the hidden paths (the state
// root with the router's files), write only to the workspace, /tmp and
// /dev/shm and the harmless devices; bind only the agent's ports, and,
// when connectRouterOnly, connect only to the router's port (see
// agentLandlock for when connect is left to the egress guard).
func landlockRules(hidden []string, agentPorts []uint16, connectRouterOnly bool) []landlock.Rule {
	rules := readAllBut("/", hidden)
	rules = append(rules,
		// Listing directories (not reading files) is allowed everywhere
		// so that tools that enumerate / keep working.
		landlock.PathAccess(landlock.AccessFSSet(llsyscall.AccessFSReadDir), "/"),
		landlock.RWDirs("/sandbox", "/tmp", "/dev/shm").WithRefer(),
		landlock.RWFiles("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty").IgnoreIfMissing().WithIoctlDev(),
	)
	if connectRouterOnly {
		rules = append(rules, landlock.ConnectTCP(RouterPort))
	}
	for _, p := range agentPorts {
		rules = append(rules, landlock.BindTCP(p))
	}
	return rules
}

// readAllBut grants read and execute on everything under dir except the
// hidden paths. Landlock rules only add access, and access granted on a
// directory covers everything beneath it, so "all but X" is built by
// granting every sibling along the path from dir down to X, never an
// ancestor of X itself.
func readAllBut(dir string, hidden []string) []landlock.Rule {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var rules []landlock.Rule
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch {
		case slices.Contains(hidden, p):
			continue
		case slices.ContainsFunc(hidden, func(h string) bool { return strings.HasPrefix(h, p+"/") }):
			rules = append(rules, readAllBut(p, hidden)...)
		case e.Type()&os.ModeSymlink != 0:
			// The target is covered under its own path; granting through
			// the link could reach a hidden path.
			continue
		case e.IsDir():
			rules = append(rules, landlock.PathAccess(accessRead, p))
		default:
			rules = append(rules, landlock.PathAccess(accessFileR, p))
		}
	}
	return rules
}

// routerLandlockRules confines the router's filesystem access: read and
// execute everywhere but the hidden paths, write only to its own
// directory (TMPDIR points inside it) and the harmless devices. Not the
// host's /tmp: the state root may live there. Every router runs as UID 1001,
// so without this one pod's router could read another pod's credentials.
func routerLandlockRules(hidden, writable []string) []landlock.Rule {
	rules := readAllBut("/", hidden)
	return append(rules,
		landlock.PathAccess(landlock.AccessFSSet(llsyscall.AccessFSReadDir), "/"),
		landlock.RWDirs(writable...).WithRefer(),
		landlock.RWFiles("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty").IgnoreIfMissing().WithIoctlDev(),
	)
}

// agentLandlock is the agent's Landlock configuration. With the egress
// guard in force (root mode) the agent's TCP connections to any port are
// redirected to the router's transparent proxy, which decides them by
// name and port; Landlock, which sees only the port the agent dialled,
// would refuse them before the redirect, so it restricts binding only and
// leaves connect to the guard (which still refuses every loopback port but
// the router's). Rootless pods have no guard: there Landlock keeps connect
// to the router's port.
func agentLandlock(rootless bool) landlock.Config {
	c := landlock.V7
	if !rootless {
		c.HandledAccessNet = landlock.AccessNetSet(llsyscall.AccessNetBindTCP)
	}
	return c.BestEffort()
}
