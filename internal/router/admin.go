package router

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/behavior"
	"github.com/kars-io/kars/internal/credential"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminBackends are the optional views the admin API exposes beyond the
// router's own state. A nil function answers 501.
type AdminBackends struct {
	// AuditTail returns the last n audit entries, oldest first.
	AuditTail func(ctx context.Context, n int) (any, error)
	// AuditVerify verifies the audit chain (against a pinned key and an
	// anchor, when the caller gives them) and reports the result.
	AuditVerify func(ctx context.Context, opts audit.VerifyOptions) (any, error)
	// AuditHead reports the log's durable head and the checkpoint key,
	// for the controller to keep outside the router (AuditHead).
	AuditHead func() (any, error)
	// Trust reports the agent's trust score.
	Trust func(ctx context.Context, agent string) (any, error)
	// Reload re-reads the config file now and reports whether it changed.
	Reload func() (bool, error)
	// A2A reports the sandbox's A2A exposure and its signed card.
	A2A func() (any, error)
	// Egress serves /admin/v1/egress and below (Egress.AdminHandler).
	Egress http.Handler
	// Mesh serves /admin/v1/mesh and below (the mesh bridge), nil when
	// the mesh is off.
	Mesh http.Handler
	// Eval serves /admin/v1/eval/ (the evaluation relay, evalRelay).
	Eval http.Handler
}

// AdminHandler returns the admin API. Health, readiness and metrics are open
// (they reveal nothing an attacker can use, and kubelet and Prometheus must
// reach them); everything under /admin/ requires the bearer token from
// tokenFile, compared in constant time. The token file is re-read when it
// changes, so rotating the Secret needs no restart.
func (r *Router) AdminHandler(tokenFile string, b AdminBackends) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if r.auditFailing.Load() {
			http.Error(w, "audit log failing", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.opts.Registry, promhttp.HandlerOpts{}))

	token := &credential.KeyFile{Path: tokenFile}
	auth := func(h http.HandlerFunc) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			want, err := token.Credential(req.Context())
			got, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
			if err != nil || !ok || subtle.ConstantTimeCompare([]byte(got), []byte(want.Secret)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="kars-router-admin"`)
				writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "admin API requires the router's admin bearer token"})
				return
			}
			h(w, req)
		})
	}
	mux.Handle("GET /admin/v1/policy/digest", auth(func(w http.ResponseWriter, _ *http.Request) {
		s := r.Snapshot()
		writeJSON(w, http.StatusOK, map[string]any{
			"digest": s.Digest, "schemaVersion": s.Config.SchemaVersion, "loadedAt": s.LoadedAt.UTC(),
			"sandbox": s.Config.Sandbox,
		})
	}))
	mux.Handle("GET /admin/v1/model", auth(func(w http.ResponseWriter, _ *http.Request) {
		g := r.gen.Load()
		type target struct {
			ID            string    `json:"id"`
			Provider      string    `json:"provider"`
			Model         string    `json:"model"`
			Deployment    string    `json:"deployment,omitempty"`
			Healthy       bool      `json:"healthy"`
			CoolDownUntil time.Time `json:"coolDownUntil,omitzero"`
		}
		now := time.Now()
		var ts []target
		for _, u := range g.upstreams {
			u.health.mu.Lock()
			until := u.health.until
			u.health.mu.Unlock()
			t := target{ID: u.ID(), Provider: string(u.Target.Provider), Model: u.Target.Model, Deployment: u.Target.Deployment, Healthy: !now.Before(until)}
			if !t.Healthy {
				t.CoolDownUntil = until.UTC()
			}
			ts = append(ts, t)
		}
		writeJSON(w, http.StatusOK, map[string]any{"primary": ts[0], "fallbacks": ts[1:], "digest": g.snap.Digest})
	}))
	mux.Handle("GET /admin/v1/budget", auth(func(w http.ResponseWriter, _ *http.Request) {
		st := r.ledger.State()
		d, m := st.Remaining()
		writeJSON(w, http.StatusOK, map[string]any{"ledger": st, "remaining": map[string]int64{"daily": d, "monthly": m}})
	}))
	mux.Handle("GET /admin/v1/pipeline", auth(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"stages": r.Stages()})
	}))
	mux.Handle("GET /admin/v1/trust", auth(func(w http.ResponseWriter, req *http.Request) {
		call(w, b.Trust != nil, func() (any, error) { return b.Trust(req.Context(), r.gen.Load().agent) })
	}))
	mux.Handle("GET /admin/v1/a2a", auth(func(w http.ResponseWriter, _ *http.Request) {
		call(w, b.A2A != nil, b.A2A)
	}))
	mux.Handle("GET /admin/v1/quarantine", auth(func(w http.ResponseWriter, _ *http.Request) {
		g := r.gen.Load()
		q := g.monitor.Quarantines()
		if q == nil {
			q = []behavior.Alert{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"agent": g.agent, "quarantines": q})
	}))
	mux.Handle("POST /admin/v1/quarantine", auth(func(w http.ResponseWriter, req *http.Request) {
		reason, err := quarantineReason(req.URL.Query().Get("reason"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		g := r.gen.Load()
		call(w, true, func() (any, error) {
			a, imposed, err := g.monitor.Impose(g.agent, reason)
			if imposed {
				r.log.Warn("agent quarantined by an operator", "agent", g.agent, "reason", reason)
			}
			return map[string]any{"agent": g.agent, "imposed": imposed, "quarantine": a}, err
		})
	}))
	mux.Handle("DELETE /admin/v1/quarantine", auth(func(w http.ResponseWriter, _ *http.Request) {
		g := r.gen.Load()
		call(w, true, func() (any, error) {
			cleared, err := g.monitor.Clear(g.agent)
			if cleared {
				r.log.Info("quarantine cleared by an operator", "agent", g.agent)
			}
			return map[string]any{"agent": g.agent, "cleared": cleared}, err
		})
	}))
	mux.Handle("GET /admin/v1/audit/tail", auth(func(w http.ResponseWriter, req *http.Request) {
		n, err := strconv.Atoi(req.URL.Query().Get("n"))
		if err != nil || n <= 0 {
			n = 50
		}
		call(w, b.AuditTail != nil, func() (any, error) { return b.AuditTail(req.Context(), min(n, 10000)) })
	}))
	mux.Handle("GET /admin/v1/audit/verify", auth(func(w http.ResponseWriter, req *http.Request) {
		opts, err := VerifyQuery(req.URL.Query())
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		call(w, b.AuditVerify != nil, func() (any, error) { return b.AuditVerify(req.Context(), opts) })
	}))
	mux.Handle("GET /admin/v1/audit/head", auth(func(w http.ResponseWriter, _ *http.Request) {
		call(w, b.AuditHead != nil, b.AuditHead)
	}))
	mux.Handle("GET /admin/v1/mcp", auth(func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"servers": r.gen.Load().mcp.Status(req.Context())})
	}))
	mux.Handle("GET /admin/v1/approvals", auth(r.serveApprovals))
	mux.Handle("POST /admin/v1/approvals/{id}", auth(r.serveApprovalDecision))
	mux.Handle("GET /admin/v1/memory", auth(func(w http.ResponseWriter, req *http.Request) {
		st, ok := r.memoryStatus(req.Context())
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "this sandbox has no KarsMemory"})
			return
		}
		writeJSON(w, http.StatusOK, st)
	}))
	mux.Handle("POST /admin/v1/memory/forget", auth(func(w http.ResponseWriter, req *http.Request) {
		call(w, true, func() (any, error) { return r.forgetMemory(req.Context()) })
	}))
	mux.Handle("POST /admin/v1/reload", auth(func(w http.ResponseWriter, _ *http.Request) {
		call(w, b.Reload != nil, func() (any, error) {
			changed, err := b.Reload()
			return map[string]any{"changed": changed, "digest": r.Snapshot().Digest}, err
		})
	}))
	if b.Egress != nil {
		mux.Handle("GET /admin/v1/egress", auth(b.Egress.ServeHTTP))
		mux.Handle("GET /admin/v1/egress/", auth(b.Egress.ServeHTTP))
	}
	if b.Mesh != nil {
		mux.Handle("/admin/v1/mesh", auth(b.Mesh.ServeHTTP))
		mux.Handle("/admin/v1/mesh/", auth(b.Mesh.ServeHTTP))
	}
	if b.Eval != nil {
		mux.Handle("/admin/v1/eval/", auth(b.Eval.ServeHTTP))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no admin endpoint " + req.Method + " " + req.URL.Path})
	})
	return mux
}

func call(w http.ResponseWriter, available bool, f func() (any, error)) {
	if !available {
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "not available in this router build"})
		return
	}
	v, err := f()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// quarantineReason checks an operator's reason for a quarantine: it ends up
// in every denial the agent sees and in the router's log, so it is short,
// printable text.
func quarantineReason(s string) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return "", errors.New("say why: ?reason=<text>")
	case len(s) > 256:
		return "", errors.New("reason longer than 256 bytes")
	case !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
		return "", errors.New("reason must be printable UTF-8 text")
	}
	return s, nil
}
