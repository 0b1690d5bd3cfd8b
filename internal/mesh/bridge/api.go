package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/kars-io/kars/internal/mesh/policy"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/kars-io/kars/internal/strictjson"
	"github.com/kars-io/kars/internal/trust"
)

// The agent API paths (127.0.0.1:8443; runtime contract, docs/mesh.md).
const (
	SendPath  = "/kars/v1/mesh/send"
	InboxPath = "/kars/v1/mesh/inbox"
	PeersPath = "/kars/v1/mesh/peers"
	TrustPath = "/kars/v1/mesh/trust"
	// AGTTrustPath is TrustPath under the name the Agent Governance
	// Toolkit's integrations query.
	AGTTrustPath = "/agt/trust"
)

// The admin API paths (:8444, the controller's bearer token).
const (
	AdminStatusPath = "/admin/v1/mesh"
	AdminPolicyPath = "/admin/v1/mesh/policy"
)

// Limits of the agent API.
const (
	maxSendBody  = MaxText + 4<<10
	maxAwait     = 5 * time.Minute
	maxInboxWait = 60 * time.Second
	maxTake      = 100
)

// Mount adds the agent API to mux.
func (b *Bridge) Mount(mux *http.ServeMux) {
	mux.HandleFunc("POST "+SendPath, b.serveSend)
	mux.HandleFunc("GET "+InboxPath, b.serveInbox)
	mux.HandleFunc("GET "+PeersPath, b.servePeers)
	mux.HandleFunc("GET "+TrustPath, b.serveTrust)
	mux.HandleFunc("GET "+AGTTrustPath, b.serveTrust)
}

// apiError answers in the OpenAI error shape the rest of the agent API
// uses.
func apiError(w http.ResponseWriter, status int, code, msg string, extra map[string]any) {
	e := map[string]any{"code": code, "message": msg, "type": "invalid_request_error"}
	if status >= 500 {
		e["type"] = "server_error"
	}
	for k, v := range extra {
		e[k] = v
	}
	writeJSON(w, status, map[string]any{"error": e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// sendBody is POST /kars/v1/mesh/send.
type sendBody struct {
	To                string  `json:"to"`
	Text              string  `json:"text"`
	InReplyTo         string  `json:"inReplyTo,omitempty"`
	AwaitReplySeconds float64 `json:"awaitReplySeconds,omitempty"`
}

func parseSend(raw []byte) (sendBody, error) {
	var sb sendBody
	if err := strictjson.Validate(raw); err != nil {
		return sb, fmt.Errorf("the body must be strict JSON: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sb); err != nil {
		return sb, fmt.Errorf(`the body must be {"to":"<peer>","text":"…","inReplyTo":"<id>","awaitReplySeconds":N}: %v`, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return sb, errors.New("trailing data after the JSON object")
	}
	switch {
	case sb.To == "":
		return sb, errors.New(`"to" names the peer (a pairing's name) and is required`)
	case sb.Text == "":
		return sb, errors.New(`"text" is required`)
	case sb.AwaitReplySeconds < 0 || time.Duration(sb.AwaitReplySeconds*float64(time.Second)) > maxAwait:
		return sb, fmt.Errorf(`"awaitReplySeconds" must be between 0 and %d`, int(maxAwait/time.Second))
	}
	return sb, nil
}

func (b *Bridge) serveSend(w http.ResponseWriter, req *http.Request) {
	raw, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxSendBody))
	if err != nil {
		apiError(w, http.StatusBadRequest, "kars_bad_request", "could not read the body: "+err.Error(), nil)
		return
	}
	sb, err := parseSend(raw)
	if err != nil {
		apiError(w, http.StatusBadRequest, "kars_bad_request", err.Error(), nil)
		return
	}
	if b.o.Gov.AuditFailing() {
		apiError(w, http.StatusServiceUnavailable, "kars_audit_unavailable", "kars-router cannot write its audit log, so it sends nothing until it can", nil)
		return
	}
	res, err := b.Send(req.Context(), SendRequest{To: sb.To, Text: sb.Text, InReplyTo: sb.InReplyTo,
		Await: time.Duration(sb.AwaitReplySeconds * float64(time.Second))})
	var re *RefusedError
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, res)
	case errors.As(err, &re):
		code := "kars_mesh_refused"
		switch re.Verdict {
		case "deny":
			code = "kars_policy_denied"
		case "require_approval":
			code = "kars_policy_requires_approval"
		case "rate_limited":
			code = "kars_policy_rate_limited"
		}
		apiError(w, http.StatusForbidden, code, re.Reason, map[string]any{"rule": re.Rule})
	case errors.Is(err, ErrNoReply):
		apiError(w, http.StatusGatewayTimeout, "kars_mesh_no_reply",
			fmt.Sprintf("the message %s reached the relay but %s did not reply in time", res.ID, sb.To), map[string]any{"id": res.ID})
	case errors.Is(err, ErrNotConnected):
		apiError(w, http.StatusServiceUnavailable, "kars_mesh_unavailable", err.Error(), nil)
	default:
		apiError(w, http.StatusBadGateway, "kars_mesh_failed", err.Error(), nil)
	}
}

func (b *Bridge) serveInbox(w http.ResponseWriter, req *http.Request) {
	wait, n := time.Duration(0), maxTake
	if v := req.URL.Query().Get("wait"); v != "" {
		s, err := strconv.ParseFloat(v, 64)
		if err != nil || s < 0 {
			apiError(w, http.StatusBadRequest, "kars_bad_request", "wait is a number of seconds", nil)
			return
		}
		wait = min(time.Duration(s*float64(time.Second)), maxInboxWait)
	}
	if v := req.URL.Query().Get("max"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 1 {
			apiError(w, http.StatusBadRequest, "kars_bad_request", "max is a positive number", nil)
			return
		}
		n = min(k, maxTake)
	}
	ms := b.Take(req.Context(), n, wait)
	if ms == nil {
		ms = []Message{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": ms})
}

// PeerView is one peer as the APIs show it.
type PeerView struct {
	Name      string    `json:"name"`
	DID       string    `json:"did"`
	Pairing   string    `json:"pairing"`
	Sandbox   string    `json:"sandbox,omitempty"`
	ExpiresAt time.Time `json:"expiresAt"`
	Trust     TrustView `json:"trust"`
	// Admitted is false when policy.Admit refuses the peer now; Refusal says
	// why.
	Admitted bool   `json:"admitted"`
	Refusal  string `json:"refusal,omitempty"`
	// Session describes the live session, if any.
	Session *SessionView `json:"session,omitempty"`
}

// TrustView is a peer's trust score against the threshold.
type TrustView struct {
	Score          int    `json:"score"`
	Tier           string `json:"tier"`
	MeetsThreshold bool   `json:"meetsThreshold"`
}

// SessionView is a live session.
type SessionView struct {
	ExpiresAt time.Time `json:"expiresAt"`
	Initiator bool      `json:"initiator"`
}

// Peers lists the policy's peers with their trust and sessions.
func (b *Bridge) Peers() []PeerView {
	b.mu.Lock()
	pol := b.pol
	sess := map[string]SessionView{}
	for did, ps := range b.sessions {
		sess[did] = SessionView{ExpiresAt: ps.expires.UTC(), Initiator: ps.initiator}
	}
	b.mu.Unlock()
	th := int(b.threshold.Load())
	out := []PeerView{}
	for _, p := range pol.Peers {
		score := b.o.Trust.Score(p.DID)
		v := PeerView{Name: p.Name, DID: p.DID, Pairing: p.Pairing, Sandbox: p.Sandbox, ExpiresAt: p.ExpiresAt.UTC(),
			Trust: TrustView{Score: score, Tier: trust.TierOf(score).String(), MeetsThreshold: score >= th}}
		r := policy.Admit(p, score, th, pol.Graph, b.o.Self, b.o.Now())
		v.Admitted, v.Refusal = !r.Refused(), r.Reason
		if s, ok := sess[p.DID]; ok {
			v.Session = &s
		}
		out = append(out, v)
	}
	return out
}

func (b *Bridge) servePeers(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"self": b.self.DID(), "peers": b.Peers()})
}

func (b *Bridge) serveTrust(w http.ResponseWriter, _ *http.Request) {
	type row struct {
		Name string `json:"name"`
		DID  string `json:"did"`
		TrustView
	}
	rows := []row{}
	for _, p := range b.Peers() {
		rows = append(rows, row{Name: p.Name, DID: p.DID, TrustView: p.Trust})
	}
	writeJSON(w, http.StatusOK, map[string]any{"threshold": b.threshold.Load(), "peers": rows})
}

// Status is GET /admin/v1/mesh: what the controller and `kars mesh
// status` read.
type Status struct {
	DID          string     `json:"did"`
	PublicKey    string     `json:"publicKey"`
	Registry     string     `json:"registry"`
	Relay        string     `json:"relay"`
	Connected    bool       `json:"connected"`
	Threshold    int        `json:"threshold"`
	PolicyDigest string     `json:"policyDigest"`
	Peers        []PeerView `json:"peers"`
	Inbox        int        `json:"inbox"`
}

// Status reports the bridge's state.
func (b *Bridge) Status() Status {
	return Status{DID: b.self.DID(), PublicKey: base64.RawURLEncoding.EncodeToString(b.self.PublicKey()),
		Registry: b.o.Registry, Relay: b.o.Relay, Connected: b.Connected(), Threshold: int(b.threshold.Load()),
		PolicyDigest: b.Policy().Digest(), Peers: b.Peers(), Inbox: b.inbox.len()}
}

// AdminHandler serves the admin API's mesh endpoints; the router puts
// its bearer-token check in front.
func (b *Bridge) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+AdminStatusPath, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, b.Status())
	})
	mux.HandleFunc("PUT "+AdminPolicyPath, func(w http.ResponseWriter, req *http.Request) {
		raw, err := io.ReadAll(http.MaxBytesReader(w, req.Body, 4<<20))
		if err != nil {
			apiError(w, http.StatusBadRequest, "kars_bad_request", err.Error(), nil)
			return
		}
		var p policy.Policy
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			apiError(w, http.StatusBadRequest, "kars_bad_request", "not a mesh policy: "+err.Error(), nil)
			return
		}
		if err := b.SetPolicy(&p); err != nil {
			apiError(w, http.StatusBadRequest, "kars_bad_request", err.Error(), nil)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"digest": p.Digest()})
	})
	mux.HandleFunc("POST "+AdminRedeemPath, func(w http.ResponseWriter, req *http.Request) {
		var in struct {
			Token string `json:"token"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 16<<10)).Decode(&in); err != nil || in.Token == "" {
			apiError(w, http.StatusBadRequest, "kars_bad_request", `the body must be {"token":"azc_pair_v1_…"}`, nil)
			return
		}
		res, err := b.Redeem(req.Context(), in.Token)
		if err != nil {
			apiError(w, http.StatusBadGateway, "kars_mesh_redeem_failed", err.Error(), nil)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"did": b.self.DID(), "result": res})
	})
	return mux
}
