// Package seccomp owns the kars-strict seccomp policy: one description of
// which system calls an agent may make, rendered two ways from the same data.
// The Kubernetes substrate loads the rendered OCI JSON profile through the
// kubelet (config/seccomp/kars-strict.json); the local substrate installs the
// equivalent BPF program itself just before it executes the agent.
//
// The policy is an allow list: anything not named is refused with EPERM. The
// explicit denials repeat the most dangerous calls by name so that reviewers
// see them, so that a later widening of the allow list cannot silently let
// them through, and so that tests can assert each one.
//
// This package must not import Kubernetes or any kars runtime package: it is
// pure data plus two renderers.
package seccomp

import (
	"slices"
)

// Action is what the filter does when a rule matches.
type Action int

const (
	// Allow lets the system call run.
	Allow Action = iota
	// Deny fails the system call with EPERM.
	Deny
	// NotImplemented fails the system call with ENOSYS. libc treats ENOSYS
	// from clone3 as "old kernel" and falls back to clone, whose flags the
	// filter can inspect (clone3 passes them in memory, out of reach of BPF).
	NotImplemented
)

// CondOp is how an argument condition compares.
type CondOp int

const (
	// MaskedZero holds when (argument & Value) == 0.
	MaskedZero CondOp = iota
	// NotEqual holds when argument != Value.
	NotEqual
)

// ArgCond restricts a rule to calls whose argument Index satisfies Op
// against Value.
type ArgCond struct {
	Index uint
	Op    CondOp
	Value uint64
}

// Rule is one line of the policy: these names get this action, optionally
// only when an argument condition holds.
type Rule struct {
	// Why says what the group is for; it is carried into documentation only.
	Why string
	// Names are Linux system call names as in the kernel's syscall tables.
	Names []string
	// Action is taken when a call matches.
	Action Action
	// When, if set, makes the rule match only when the argument condition
	// holds; other calls fall through to later rules and the default.
	When *ArgCond
}

// Profile is a complete seccomp policy. Calls no rule matches are denied
// with EPERM. Rules are evaluated in order; the first match wins.
type Profile struct {
	// Name identifies the profile, e.g. in the Kubernetes localhost path.
	Name string
	// Rules are evaluated in order.
	Rules []Rule
}

// Counts summarises a profile the way reviewers compare it with other
// profiles: how many calls are allowed (conditionally or not) and how many
// are refused by an explicit rule rather than by the default.
type Counts struct {
	Allowed, ExplicitDeny int
}

// Counts returns the number of distinct allowed and explicitly denied names.
func (p Profile) Counts() Counts {
	allowed := map[string]bool{}
	denied := map[string]bool{}
	for _, r := range p.Rules {
		for _, n := range r.Names {
			if r.Action == Allow {
				allowed[n] = true
			} else {
				denied[n] = true
			}
		}
	}
	return Counts{Allowed: len(allowed), ExplicitDeny: len(denied)}
}

// Allowed reports whether name is allowed by some rule (possibly only
// under an argument condition).
func (p Profile) Allowed(name string) bool {
	for _, r := range p.Rules {
		if slices.Contains(r.Names, name) {
			return r.Action == Allow
		}
	}
	return false
}

// namespaceCloneFlags are the clone(2) flags that create namespaces:
// CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
// CLONE_NEWPID and CLONE_NEWNET. CLONE_NEWTIME (0x80) overlaps clone's
// exit-signal byte and is only reachable through clone3 and unshare, both
// of which kars-strict refuses outright.
const namespaceCloneFlags = 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 |
	0x20000000 | 0x40000000 | 0x00020000

// ipprotoMPTCP is IPPROTO_MPTCP from include/uapi/linux/in.h.
const ipprotoMPTCP = 262

// Strict returns the kars-strict profile. It allows what Go programs,
// CPython and Node.js need to run an agent (files, memory, threads, timers,
// sockets, SysV/POSIX IPC inside the pod's own IPC namespace) and denies
// everything that changes the kernel, other processes, namespaces, mounts,
// keys, BPF, or time.
func Strict() Profile {
	return Profile{
		Name: "kars-strict",
		Rules: []Rule{
			{Why: "files and descriptors", Action: Allow, Names: fileCalls},
			{Why: "polling, events and async I/O", Action: Allow, Names: eventCalls},
			{Why: "memory management", Action: Allow, Names: memoryCalls},
			{Why: "processes, threads, identity and scheduling", Action: Allow, Names: processCalls},
			{Why: "signals and time", Action: Allow, Names: signalTimeCalls},
			{Why: "sockets (reachability is the egress guard's job)", Action: Allow, Names: socketCalls},
			{
				// Landlock's TCP bind/connect rules do not cover Multipath
				// TCP sockets; refusing IPPROTO_MPTCP keeps them in force.
				// Go's net package falls back to plain TCP on any error.
				Why:    "sockets, except Multipath TCP",
				Action: Allow,
				Names:  []string{"socket"},
				When:   &ArgCond{Index: 2, Op: NotEqual, Value: ipprotoMPTCP},
			},
			{Why: "IPC inside the pod's own IPC namespace", Action: Allow, Names: ipcCalls},
			{Why: "self-restriction: an agent may tighten, never loosen", Action: Allow, Names: selfRestrictCalls},
			{
				Why:    "threads and fork, but no new namespaces",
				Action: Allow,
				Names:  []string{"clone"},
				When:   &ArgCond{Index: 0, Op: MaskedZero, Value: namespaceCloneFlags},
			},
			{Why: "clone3 hides its flags from BPF: make libc fall back to clone", Action: NotImplemented, Names: []string{"clone3"}},
			{Why: "escape, tamper and kernel-surface calls", Action: Deny, Names: deniedCalls},
		},
	}
}

var fileCalls = []string{
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
	"preadv2", "pwritev2", "open", "openat", "openat2", "creat", "close", "close_range",
	"lseek", "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs",
	"access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents",
	"getdents64", "fcntl", "dup", "dup2", "dup3", "pipe", "pipe2", "mkdir", "mkdirat",
	"rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link", "linkat",
	"symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown",
	"fchown", "lchown", "fchownat", "truncate", "ftruncate", "fallocate", "fsync",
	"fdatasync", "sync", "syncfs", "sync_file_range", "utime", "utimes", "utimensat",
	"futimesat", "umask", "chdir", "fchdir", "getcwd", "sendfile", "splice", "tee",
	"copy_file_range", "fadvise64", "readahead", "flock", "ioctl", "getxattr",
	"lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr", "memfd_create",
	"inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
}

var eventCalls = []string{
	"select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
	"epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd",
	"signalfd4", "timerfd_create", "timerfd_settime", "timerfd_gettime", "io_setup",
	"io_destroy", "io_submit", "io_getevents", "io_pgetevents", "io_cancel",
}

var memoryCalls = []string{
	"brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore",
	"mlock", "mlock2", "munlock", "mlockall", "munlockall", "membarrier",
	"get_mempolicy", "set_mempolicy", "mbind", "pkey_alloc", "pkey_free", "pkey_mprotect",
	"map_shadow_stack",
}

var processCalls = []string{
	"fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
	"getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
	"getresgid", "getgroups", "setuid", "setgid", "setreuid", "setregid", "setresuid",
	"setresgid", "setgroups", "setfsuid", "setfsgid", "getpgid", "setpgid", "getpgrp",
	"getsid", "setsid", "capget", "capset", "prctl", "arch_prctl", "set_tid_address",
	"set_robust_list", "get_robust_list", "futex", "futex_waitv", "futex_wake",
	"futex_wait", "futex_requeue", "rseq", "sched_yield", "sched_getaffinity",
	"sched_setaffinity", "sched_getparam", "sched_setparam", "sched_getscheduler",
	"sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
	"sched_rr_get_interval", "sched_getattr", "sched_setattr", "getpriority",
	"setpriority", "getrlimit", "setrlimit", "prlimit64", "getrusage", "times", "uname",
	"sysinfo", "getrandom", "getcpu", "ioprio_get", "ioprio_set", "pidfd_open",
}

var signalTimeCalls = []string{
	"kill", "tkill", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
	"rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
	"rt_sigsuspend", "sigaltstack", "pidfd_send_signal", "restart_syscall", "pause",
	"nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday",
	"time", "alarm", "getitimer", "setitimer", "timer_create", "timer_settime",
	"timer_gettime", "timer_getoverrun", "timer_delete",
}

var socketCalls = []string{
	"socketpair", "connect", "accept", "accept4", "bind", "listen",
	"getsockname", "getpeername", "setsockopt", "getsockopt", "sendto", "recvfrom",
	"sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
}

var ipcCalls = []string{
	"shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semtimedop", "semctl",
	"msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
	"mq_timedreceive", "mq_notify", "mq_getsetattr",
}

var selfRestrictCalls = []string{
	"seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
}

// deniedCalls are refused by name. Each is a known path out of a sandbox or
// into the kernel's attack surface.
var deniedCalls = []string{
	// Other processes' memory and state.
	"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
	// Mounts and root changes.
	"mount", "umount2", "mount_setattr", "move_mount", "open_tree", "fsopen",
	"fsconfig", "fsmount", "fspick", "pivot_root", "chroot",
	// Namespaces.
	"unshare", "setns",
	// Kernel keyring.
	"keyctl", "add_key", "request_key",
	// Kernel programmability and observation.
	"bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
	"io_uring_register", "fanotify_init", "lookup_dcookie",
	// Kernel and module loading.
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"uselib",
	// Machine state.
	"reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
	"vhangup", "sethostname", "setdomainname", "settimeofday", "clock_settime",
	"clock_adjtime", "adjtimex", "iopl", "ioperm", "personality", "_sysctl", "sysfs",
	"ustat", "nfsservctl",
	// File handles bypass path-based checks (the "shocker" escape).
	"open_by_handle_at", "name_to_handle_at",
}
