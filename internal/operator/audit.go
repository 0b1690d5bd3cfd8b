package operator

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kars-io/kars/internal/audit"
)

// Admin is access to one sandbox's router admin API, held open while the
// operator follows that sandbox (on a cluster it is a port-forward, which
// is too costly to open per request).
type Admin interface {
	// Get fetches an admin path (with its query) and decodes its JSON
	// answer into v; a status other than 200 is an error whose text names
	// the status code.
	Get(ctx context.Context, path string, v any) error
	// Close releases the access.
	Close()
}

// AdminDialer opens access to the router admin API of a sandbox. `kars
// operator` passes the one `kars audit` uses (the dev daemon's socket
// under kars dev, a port-forward on a cluster, the admin Secret's token
// and certificate either way), so the TUI reaches a router exactly as the
// CLI does.
type AdminDialer func(ctx context.Context, sandbox types.NamespacedName) (Admin, error)

// AuditMsg carries a sandbox's newest audit entries (oldest first), or
// why they could not be read.
type AuditMsg struct {
	Sandbox types.NamespacedName
	Entries []audit.Entry
	Err     error
	At      time.Time
}

// MeshMsg carries the selected sandbox's mesh endpoint as its router
// reports it (GET /admin/v1/mesh): the live trust scores of its peers,
// which only the router holds. Off is true when the router runs no mesh.
type MeshMsg struct {
	Sandbox types.NamespacedName
	Status  MeshStatus
	Off     bool
	Err     error
}

// MeshStatus is the part of the router's mesh status the trust page shows
// (internal/mesh/bridge.Status).
type MeshStatus struct {
	DID       string     `json:"did"`
	Connected bool       `json:"connected"`
	Threshold int        `json:"threshold"`
	Peers     []MeshPeer `json:"peers"`
}

// MeshPeer is one peer as the router's admission gate sees it.
type MeshPeer struct {
	Name    string `json:"name"`
	Sandbox string `json:"sandbox"`
	Trust   struct {
		Score          int    `json:"score"`
		Tier           string `json:"tier"`
		MeetsThreshold bool   `json:"meetsThreshold"`
	} `json:"trust"`
	Admitted bool   `json:"admitted"`
	Refusal  string `json:"refusal"`
}

// MeshEvery is how many head polls pass between two reads of the mesh
// status when the audit log did not move (a peer's trust changes with an
// audited event; its connection may change without one).
const MeshEvery = 10

// AuditLines is how many entries the audit tail keeps.
const AuditLines = 50

// AuditPoll is how often FollowAudit asks the router for its log's head.
const AuditPoll = time.Second

// FollowAudit sends the audit tail of sandbox key as AuditMsgs until ctx
// ends: once at once, then whenever the log grows.
//
// The router offers no follow stream for its audit log: its admin API has
// GET /admin/v1/audit/tail?n= (which reads the log's day files) and GET
// /admin/v1/audit/head (the last durable entry, from memory). Only the
// egress decisions have a follow stream (/admin/v1/egress/events?follow=1),
// and they are one kind of entry among many. So this asks for the head
// every `every` — one small request, answered from the router's memory —
// and reads the tail only when the head's sequence number moved: an idle
// sandbox costs one tiny request a second and no file reads. Errors (the
// sandbox not running yet, a port-forward dropped) are reported, the
// access reopened, and polling goes on, slower.
func FollowAudit(ctx context.Context, dial AdminDialer, key types.NamespacedName, every time.Duration, send func(tea.Msg)) {
	var conn Admin
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	var last uint64
	seen := false
	wait := every
	polls := 0
	for {
		err := func() error {
			if conn == nil {
				c, err := dial(ctx, key)
				if err != nil {
					return err
				}
				conn = c
			}
			var head struct {
				Seq uint64 `json:"seq"`
			}
			if err := conn.Get(ctx, "/admin/v1/audit/head", &head); err != nil {
				return err
			}
			polls++
			if seen && head.Seq == last {
				if polls%MeshEvery == 0 {
					readMesh(ctx, conn, key, send)
				}
				return nil
			}
			var entries []audit.Entry
			if err := conn.Get(ctx, "/admin/v1/audit/tail?n="+strconv.Itoa(AuditLines), &entries); err != nil {
				return err
			}
			last, seen = head.Seq, true
			send(AuditMsg{Sandbox: key, Entries: entries, At: time.Now()})
			readMesh(ctx, conn, key, send)
			return nil
		}()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if conn != nil {
				conn.Close()
				conn = nil
			}
			seen = false
			send(AuditMsg{Sandbox: key, Err: err, At: time.Now()})
			wait = min(wait*2, 8*every)
		} else {
			wait = every
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// readMesh sends the router's mesh status; a router without a mesh
// answers 404 (its admin API mounts no mesh endpoint).
func readMesh(ctx context.Context, conn Admin, key types.NamespacedName, send func(tea.Msg)) {
	var st MeshStatus
	err := conn.Get(ctx, "/admin/v1/mesh", &st)
	if err != nil && strings.Contains(err.Error(), "404") {
		send(MeshMsg{Sandbox: key, Off: true})
		return
	}
	send(MeshMsg{Sandbox: key, Status: st, Err: err})
}

// refusedEgress reports the host and port of an audit entry in which the
// router refused a connection (attrs op=egress, action "egress:HOST:PORT")
// because nothing allowed it (step "default", docs/egress.md "The
// decision") — the one refusal an EgressApproval lifts: a blocklisted
// host, a refused address or a ToolPolicy denial (steps blocklist,
// address, governance) stays refused whatever is approved.
func refusedEgress(e audit.Entry) (host string, port int32, ok bool) {
	rest, found := strings.CutPrefix(e.Action, "egress:")
	if !found || e.Decision == "allow" || e.Attrs["op"] != "egress" || e.Attrs["step"] != "default" {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, ':')
	if i <= 0 {
		return "", 0, false
	}
	p, err := strconv.ParseUint(rest[i+1:], 10, 16)
	if err != nil || p == 0 {
		return "", 0, false
	}
	host = strings.TrimSuffix(strings.TrimPrefix(rest[:i], "["), "]")
	if host == "" || strings.ContainsAny(host, " /\\@") {
		return "", 0, false
	}
	return host, int32(p), true
}

func auditDetails(e audit.Entry) string {
	var b strings.Builder
	if e.Rule != "" {
		fmt.Fprintf(&b, "rule %s", e.Rule)
	}
	if e.Decision != "allow" && e.Reason != "" {
		if b.Len() > 0 {
			b.WriteString(" · ")
		}
		b.WriteString(e.Reason)
	}
	return b.String()
}
