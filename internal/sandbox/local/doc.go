// Package local realises a kars sandbox as a local "pod" on one Linux
// machine, with no container runtime and no cluster, keeping the
// guarantees of the Kubernetes shape (init egress guard, agent UID 1000,
// router UID 1001):
//
//   - its own network namespace with loopback and a veth pair to the host;
//     the host side gets a kars-owned nftables table (masquerade, forward)
//     so the router reaches its upstreams; addresses are /30s of a private
//     pool, allocated under a lock on the state root;
//   - the egress guard (package egress) in the pod: UID 1000 reaches only
//     127.0.0.1:8443, IPv6, UDP and instance metadata are rejected;
//   - the router as UID 1001 with no_new_privs and no capabilities; its
//     files live in <StateRoot>/<ID>/router (0700, files 0600, owner 1001);
//   - the agent as UID 1000 in new mount, PID, UTS and IPC namespaces on a
//     read-only view of the host root with tmpfs /tmp, /run and /dev/shm,
//     a private /proc, a minimal /dev and the workspace at /sandbox; the
//     state root is hidden; every capability dropped (bounding set too),
//     securebits locked, no_new_privs, Landlock (filesystem, TCP bind and
//     connect, signal and abstract-socket scoping), the kars-strict seccomp
//     filter (package seccomp), cgroup v1 or v2 memory, CPU and PID limits;
//   - a rootless fallback in an unprivileged user namespace that keeps what
//     it can and says what it cannot in Pod.Guarantees.
//
// # The InitMain contract
//
// Work that must happen between clone and exec (mounts, pivot_root,
// dropping capabilities, setuid, Landlock, seccomp) runs in re-executed
// copies of the calling binary (/proc/self/exe) marked by an environment
// variable. Every binary that calls Start — the kars CLI, the controller,
// test binaries through TestMain — must call InitMain first thing in main.
//
// # Crash safety
//
// Each pod records what it creates in <StateRoot>/<ID>/state.json before
// creating it. The pod's processes die with their parent (parent-death
// signal, and the pod init watches its control socket), taking the
// network namespace and the pod side of the link with them; host-side
// leftovers (nftables table, cgroups, state directory) are removed by
// CleanupStale, which the embedding program calls at start-up.
//
// This package must not import Kubernetes packages: the controller maps
// its rendered pod onto a Spec.
package local
