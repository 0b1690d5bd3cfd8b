package local

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/landlock-lsm/go-landlock/landlock"
	"golang.org/x/sys/unix"
)

// initEnv marks a re-executed copy of the embedding binary as one of the
// substrate's in-sandbox stages. Its value names the stage.
const (
	initEnv       = "KARS_SANDBOX_INIT"
	routerCfgEnv  = "KARS_SANDBOX_ROUTER"
	stagePod      = "pod"
	stageRouter   = "router"
	podInitArgv0  = "kars-pod-init"
	routerInitArg = "kars-router-init"
)

func init() {
	// The stages confine their main thread and then execute from it; the
	// main goroutine must stay on that thread from the very start.
	if os.Getenv(initEnv) != "" {
		runtime.LockOSThread()
	}
}

// InitMain runs the sandbox stage this process was started as, and never
// returns in that case. In any other process it returns at once.
//
// The contract: every binary that calls Start (the kars CLI, the
// controller, test binaries through TestMain) must call InitMain first
// thing in main, before flag parsing, goroutines or any other
// initialisation with side effects. Start re-executes /proc/self/exe with
// an environment marker to run the code that must sit between clone and
// exec (mounts, pivot_root, capability drop, setuid, Landlock, seccomp);
// InitMain is where that copy branches off.
func InitMain() {
	switch os.Getenv(initEnv) {
	case "":
		return
	case stagePod:
		os.Exit(podInitMain())
	case stageRouter:
		err := routerInitMain()
		fmt.Fprintln(os.Stderr, "kars-router-init:", err)
		os.Exit(126)
	default:
		fmt.Fprintf(os.Stderr, "kars sandbox: unknown stage %q\n", os.Getenv(initEnv))
		os.Exit(127)
	}
}

// routerConfig is handed to the router stage in routerCfgEnv.
type routerConfig struct {
	Path  string   `json:"path"`
	Args  []string `json:"args"`
	Env   []string `json:"env"`
	Dir   string   `json:"dir"`
	Ports []uint16 `json:"ports"`
	// SetIDs is false in rootless mode, where the router keeps the
	// invoking user's identity.
	SetIDs bool `json:"setIDs"`
	UID    int  `json:"uid"`
	GID    int  `json:"gid"`
	// Hide are paths the router may not read (the state root: other pods'
	// router directories belong to the same UID 1001); Writable are the
	// paths it may write (its own directory first).
	Hide     []string `json:"hide"`
	Writable []string `json:"writable"`
}

// routerInitMain confines the main thread (bounding set, UID 1001,
// no_new_privs) and executes the router with its listeners on fds 3…,
// announced with the systemd socket-activation variables.
func routerInitMain() error {
	var cfg routerConfig
	if err := json.Unmarshal([]byte(os.Getenv(routerCfgEnv)), &cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	// Only the listeners (fds 3…) pass to the router; anything else the
	// embedding binary inherited is closed on exec.
	if err := unix.CloseRange(uint(3+len(cfg.Ports)), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("close_range: %w", err)
	}
	c := confinement{SetIDs: cfg.SetIDs, UID: cfg.UID, GID: cfg.GID, LandlockFD: -1}
	if landlockABI() > 0 {
		// Filesystem only: the router's network is the open side of the
		// pod, governed by its own policy.
		llc := landlock.Config{HandledAccessFS: landlock.V7.HandledAccessFS}
		fd, flags, err := llc.BestEffort().NewRulesetFD(routerLandlockRules(cfg.Hide, cfg.Writable)...)
		if err != nil {
			return fmt.Errorf("landlock ruleset: %w", err)
		}
		c.LandlockFD, c.LandlockFlags = fd, flags
	}
	if err := c.apply(); err != nil {
		return err
	}
	// The parent-death signal is cleared by the UID change; set it again
	// so the router dies with kars even if nothing else notices.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("pdeathsig: %w", err)
	}
	if err := os.Chdir(cfg.Dir); err != nil {
		return err
	}
	names := make([]string, len(cfg.Ports))
	for i, p := range cfg.Ports {
		names[i] = strconv.Itoa(int(p))
	}
	env := append(cfg.Env,
		"LISTEN_PID="+strconv.Itoa(os.Getpid()),
		"LISTEN_FDS="+strconv.Itoa(len(cfg.Ports)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
	)
	return syscall.Exec(cfg.Path, append([]string{cfg.Path}, cfg.Args...), env)
}
