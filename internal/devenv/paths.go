// Package devenv is `kars dev`: the governed stack on one machine. It runs
// the persistent control plane (internal/devcluster), the controller with the
// local sandbox substrate, and the default sandbox, in a background daemon
// whose state lives under one folder (~/.kars/dev).
//
// This file holds the folder layout, which the CLI shares with the daemon.
package devenv

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"

	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/sandbox/local"
)

// Home is the kars state root: $KARS_HOME, else ~/.kars.
func Home() string {
	if h := os.Getenv("KARS_HOME"); h != "" {
		return h
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".kars")
	}
	return filepath.Join(os.TempDir(), "kars")
}

// Paths locates everything of one dev environment.
type Paths struct{ Dir string }

// DefaultPaths is the dev environment under Home().
func DefaultPaths() Paths { return Paths{Dir: filepath.Join(Home(), "dev")} }

// Cluster is the control plane's state folder (etcd, pki, logs).
func (p Paths) Cluster() string { return filepath.Join(p.Dir, "cluster") }

// Kubeconfig is the kubeconfig of the dev cluster.
func (p Paths) Kubeconfig() string { return filepath.Join(p.Cluster(), "kubeconfig") }

// PIDFile holds the daemon's process id while it runs.
func (p Paths) PIDFile() string { return filepath.Join(p.Dir, "daemon.pid") }

// Progress is the file the daemon reports its start-up steps to.
func (p Paths) Progress() string { return filepath.Join(p.Dir, "progress.log") }

// Offload is the offload broker's state: mesh sessions, audit log, trust
// scores (docs/offload.md).
func (p Paths) Offload() string { return filepath.Join(p.Dir, "offload") }

// Log is the daemon's log.
func (p Paths) Log() string { return filepath.Join(p.Dir, "logs", "daemon.log") }

// Sandboxes is the root of the local pods' state (one folder per pod).
func (p Paths) Sandboxes() string { return filepath.Join(p.PodRoot(), "sandboxes") }

// RouterStates holds each sandbox's router state (audit log, ledger,
// trust, quarantine, checkpoint key), kept across pod restarts.
func (p Paths) RouterStates() string { return filepath.Join(p.PodRoot(), "routers") }

// HiddenFromPods are the host paths no sandbox may read, except keep (the
// folder of the binaries pods run): this dev environment's folders (etcd
// data, kubeconfig, the daemon's sockets, every pod's and workspace's
// files), the rest of the kars home, and home directories — agents run as
// UID 1000, which may be a real user's on this machine, and rootless
// agents as the invoking user.
func (p Paths) HiddenFromPods(keep ...string) []string {
	roots := []string{p.Dir, p.PodRoot(), Home(), "/home", "/root"}
	if h, err := os.UserHomeDir(); err == nil {
		roots = append(roots, h)
	}
	return local.HidePaths(roots, keep)
}

// Workspaces holds each sandbox's /sandbox, kept across restarts.
func (p Paths) Workspaces() string { return filepath.Join(p.PodRoot(), "workspaces") }

// PodRoot is where pods and workspaces live. The sandbox UIDs (1000, 1001)
// must traverse every folder above them, and root's home is private
// (mode 0700), so when Dir lies below a folder others cannot traverse, the
// pods live under /var/lib/kars instead — a folder per state Dir.
func (p Paths) PodRoot() string {
	// Rootless pods run every process as the invoking user: nobody else
	// needs to traverse anything.
	if os.Geteuid() != 0 || traversable(p.Dir) {
		return p.Dir
	}
	sum := sha256.Sum256([]byte(p.Dir))
	return filepath.Join("/var/lib/kars", "dev-"+hex.EncodeToString(sum[:4]))
}

// traversable reports whether every existing ancestor of dir lets others
// search it (the x bit for "other").
func traversable(dir string) bool {
	for d := filepath.Dir(filepath.Clean(dir)); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == "/" || d == "." {
			return true
		}
	}
}

// Sockets is where the daemon exposes each sandbox's agent and router admin
// ports as Unix sockets (root-only), for `kars connect` and friends.
func (p Paths) Sockets(namespace, name string) string {
	return filepath.Join(p.Dir, "sockets", namespace, name)
}

// AgentSocket reaches the agent's chat endpoint of a sandbox.
func (p Paths) AgentSocket(namespace, name string) string {
	return filepath.Join(p.Sockets(namespace, name), "agent.sock")
}

// AdminSocket reaches the router's admin API of a sandbox.
func (p Paths) AdminSocket(namespace, name string) string {
	return filepath.Join(p.Sockets(namespace, name), "admin.sock")
}

// Mesh is kars-mesh's state folder (its registry and relay journals).
func (p Paths) Mesh() string { return filepath.Join(p.Dir, "mesh") }

// MeshAddr is where `kars dev` runs kars-mesh: registry and relay on one
// loopback port. Local routers reach it through a Unix socket the local
// substrate puts in each router's folder.
const MeshAddr = "127.0.0.1:16580"

// MeshEndpoints are kars-mesh's URLs under `kars dev`.
func MeshEndpoints() *render.MeshEndpoints {
	return &render.MeshEndpoints{Registry: "http://" + MeshAddr, Relay: "ws://" + MeshAddr + "/ws"}
}
