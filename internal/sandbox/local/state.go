package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// record is what a pod created, written to <StateRoot>/<ID>/state.json
// before each resource exists, so that a later CleanupStale can undo a pod
// whose parent died without stopping it.
type record struct {
	ID       string  `json:"id"`
	Owner    procRef `json:"owner"`
	Rootless bool    `json:"rootless"`
	Link     *link   `json:"link,omitempty"`
	// NetnsInode and NetnsCookie identify the pod's network namespace
	// (root mode), so tests and operators can confirm it is gone. The
	// inode is what /proc/<pid>/ns/net shows, but the kernel hands it to
	// the next namespace created anywhere on the host once this one is
	// gone; the cookie (SO_NETNS_COOKIE) is never reused.
	NetnsInode  uint64    `json:"netnsInode,omitempty"`
	NetnsCookie uint64    `json:"netnsCookie,omitempty"`
	Cgroups     *cgroups  `json:"cgroups,omitempty"`
	Procs       []procRef `json:"procs,omitempty"`
	Workspace   string    `json:"workspace"`
	// WorkspaceMount is the workspace image's mount point, unmounted
	// when the pod goes.
	WorkspaceMount string    `json:"workspaceMount,omitempty"`
	Created        time.Time `json:"created"`
}

// procRef names a process robustly against PID reuse: the PID plus the
// kernel's start time of that process.
type procRef struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

func refOf(pid int) procRef {
	st, _ := procStart(pid)
	return procRef{PID: pid, Start: st}
}

// alive reports whether the same process (not a reused PID) still runs.
func (r procRef) alive() bool {
	st, err := procStart(r.PID)
	return err == nil && r.PID > 0 && st == r.Start
}

// procStart reads field 22 (starttime) of /proc/<pid>/stat.
func procStart(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields after the
	// last ')' are plain.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func (r *record) save(dir string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".state.json.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "state.json"))
}

func loadRecord(dir string) (*record, error) {
	data, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return &r, nil
}

// lockRoot takes an exclusive lock on the state root, serialising address
// allocation and cleanup between kars processes sharing it.
func lockRoot(root string) (unlock func(), err error) {
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(root, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// undo removes everything r says was created. It is safe to run more than
// once and on partial records.
func (r *record) undo(dir string) error {
	var errs []error
	for _, p := range r.Procs {
		if p.alive() {
			syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
	if r.Cgroups != nil {
		if err := r.Cgroups.remove(5 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range r.Procs {
		waitGone(p, 5*time.Second)
	}
	if r.Link != nil {
		if err := teardownLink(*r.Link); err != nil {
			errs = append(errs, err)
		}
	}
	if r.WorkspaceMount != "" {
		// Before removing dir, which may hold the mount point: removing
		// through a mounted workspace would delete its files.
		if err := unmountWorkspace(r.WorkspaceMount); err != nil {
			errs = append(errs, err)
			return errors.Join(errs...)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func waitGone(p procRef, timeout time.Duration) {
	for deadline := time.Now().Add(timeout); p.alive() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// CleanupStale removes the pods under stateRoot whose owning process is
// gone — left behind when kars (or the controller) crashed or was killed —
// together with their processes, cgroups, links and host nftables tables.
// Pods owned by a live process are left alone. It returns the IDs it
// cleaned. Call it once at start-up, before starting pods.
func CleanupStale(stateRoot string) ([]string, error) {
	unlock, err := lockRoot(stateRoot)
	if err != nil {
		return nil, fmt.Errorf("local: cleanup %s: %w", stateRoot, err)
	}
	defer unlock()
	entries, err := os.ReadDir(stateRoot)
	if err != nil {
		return nil, fmt.Errorf("local: cleanup %s: %w", stateRoot, err)
	}
	var cleaned []string
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(stateRoot, e.Name())
		r, err := loadRecord(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r.Owner.alive() {
			continue
		}
		if err := r.undo(dir); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", r.ID, err))
			continue
		}
		cleaned = append(cleaned, r.ID)
	}
	return cleaned, errors.Join(errs...)
}
