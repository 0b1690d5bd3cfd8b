package router

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/agent"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/mesh/client"
	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/policy"
	"github.com/kars-io/kars/internal/mesh/server"
	"github.com/kars-io/kars/internal/mesh/session"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/mesh/x3dh"
	"github.com/kars-io/kars/internal/pairing"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// meshNet is an in-process kars-mesh on loopback.
type meshNet struct {
	dir string
	url string
	srv *server.Server
}

func startMeshNet(t *testing.T, redeem ...func(context.Context, pairing.Redemption) (*pairing.Result, error)) *meshNet {
	t.Helper()
	dir := t.TempDir()
	o := server.Options{Dir: dir}
	if len(redeem) > 0 {
		o.Redeem = redeem[0]
	}
	s, err := server.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		s.Close()
	})
	return &meshNet{dir: dir, url: hs.URL, srv: s}
}

func (m *meshNet) relayURL() string { return "ws" + strings.TrimPrefix(m.url, "http") + "/ws" }

// meshRouter is a serving router with the mesh on.
type meshRouter struct {
	t     *testing.T
	name  string
	cfg   *routerconfig.Config
	path  string
	addrs map[string]string
	stop  func() error
	did   string
}

var meshGov = &governance.Policy{Name: "mesh-test", Rules: []governance.Rule{
	{Name: "inference", Effect: governance.EffectAllow, Actions: []string{"inference:*"}},
	{Name: "mesh", Effect: governance.EffectAllow, Actions: []string{"mesh:*"}},
}}

func startMeshRouter(t *testing.T, m *meshNet, name string, gov *governance.Policy, tune ...func(*routerconfig.Config)) *meshRouter {
	t.Helper()
	dir := t.TempDir()
	c := routerconfigtest.Offline(t, dir)
	c.Sandbox = routerconfigtest.Sandbox("kars-"+name, name)
	c.Governance = gov
	c.Mesh = &routerconfig.Mesh{Registry: m.url, Relay: m.relayURL(), TrustThreshold: 500}
	for _, f := range tune {
		f(c)
	}
	r := &meshRouter{t: t, name: name, cfg: c, path: routerconfigtest.Write(t, dir, c)}
	r.start()
	return r
}

// start serves the router's config and waits until it reaches the mesh.
func (r *meshRouter) start() {
	t := r.t
	t.Helper()
	r.addrs, r.stop = serving(t, ServeOptions{ConfigPath: r.path})
	deadline := time.Now().Add(20 * time.Second)
	for {
		var st bridge.Status
		r.admin("GET", bridge.AdminStatusPath, nil, &st)
		if st.Connected {
			r.did = st.DID
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("router %s did not connect to the mesh: %+v", r.name, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *meshRouter) admin(method, path string, body any, out any) int {
	r.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+r.addrs["admin"]+path, rd)
	req.Header.Set("Authorization", "Bearer admin-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			r.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode
}

// agent calls the agent API and decodes the answer.
func (r *meshRouter) agent(method, path string, body any) (int, map[string]any) {
	r.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+r.addrs["agent"]+path, rd)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		r.t.Fatalf("%s %s: %d %q", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func (r *meshRouter) pair(peers ...policy.Peer) {
	r.t.Helper()
	var out map[string]string
	if code := r.admin("PUT", bridge.AdminPolicyPath, policy.Policy{Peers: peers}, &out); code != 200 {
		r.t.Fatalf("policy push to %s: %d %v", r.name, code, out)
	}
}

func peerOf(name, did string) policy.Peer {
	return policy.Peer{Name: name, DID: did, Pairing: "test/" + name, Capabilities: []string{"handoff"}, ExpiresAt: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
}

// auditActions counts a router's audit entries by action and decision.
func (r *meshRouter) audit() []audit.Entry {
	r.t.Helper()
	es, err := AuditTail(r.cfg.Audit.Dir, 1000)
	if err != nil {
		r.t.Fatal(err)
	}
	return es
}

func findEntry(es []audit.Entry, action, decision, op string) *audit.Entry {
	for i := range es {
		e := &es[i]
		if e.Action == action && e.Decision == decision && (op == "" || e.Attrs["op"] == op) {
			return e
		}
	}
	return nil
}

func inbox(t *testing.T, r *meshRouter, wait int) []any {
	t.Helper()
	code, out := r.agent("GET", fmt.Sprintf("%s?wait=%d", bridge.InboxPath, wait), nil)
	if code != 200 {
		t.Fatalf("inbox: %d %v", code, out)
	}
	ms, _ := out["messages"].([]any)
	return ms
}

// TestMeshTwoRouters runs two routers against one kars-mesh: planner
// sends to worker through its agent API and waits for the answer; worker
// reads it from its inbox and replies. Both ends decide and audit every
// message, the KNOCK comes first, and the relay's stored bytes never hold
// the plaintext.
func TestMeshTwoRouters(t *testing.T) {
	m := startMeshNet(t)
	planner := startMeshRouter(t, m, "planner", meshGov)
	worker := startMeshRouter(t, m, "worker", meshGov)
	planner.pair(peerOf("worker", worker.did))
	worker.pair(peerOf("planner", planner.did))

	const question = "please review commit 4f2a: the plaintext must never reach the relay"
	type result struct {
		code int
		out  map[string]any
	}
	sent := make(chan result, 1)
	go func() {
		code, out := planner.agent("POST", bridge.SendPath, map[string]any{"to": "worker", "text": question, "awaitReplySeconds": 20})
		sent <- result{code, out}
	}()
	ms := inbox(t, worker, 20)
	if len(ms) != 1 {
		t.Fatalf("worker's inbox: %v", ms)
	}
	got := ms[0].(map[string]any)
	if got["from"] != "planner" || got["text"] != question || got["fromDid"] != planner.did {
		t.Fatalf("worker received %v", got)
	}
	code, out := worker.agent("POST", bridge.SendPath, map[string]any{"to": "planner", "text": "LGTM", "inReplyTo": got["id"]})
	if code != 200 {
		t.Fatalf("worker's reply: %d %v", code, out)
	}
	r := <-sent
	if r.code != 200 {
		t.Fatalf("planner's send: %d %v", r.code, r.out)
	}
	reply, _ := r.out["reply"].(map[string]any)
	if reply == nil || reply["text"] != "LGTM" || reply["from"] != "worker" || reply["inReplyTo"] != got["id"] {
		t.Fatalf("planner got %v", r.out)
	}
	// A reply awaited by a send never reaches the inbox as well.
	if ms := inbox(t, planner, 0); len(ms) != 0 {
		t.Fatalf("planner's inbox holds %v", ms)
	}

	// A second round reuses the session: no second KNOCK.
	go func() {
		code, out := planner.agent("POST", bridge.SendPath, map[string]any{"to": "worker", "text": "one more"})
		sent <- result{code, out}
	}()
	if r := <-sent; r.code != 200 {
		t.Fatalf("second send: %d %v", r.code, r.out)
	}
	if ms := inbox(t, worker, 20); len(ms) != 1 || ms[0].(map[string]any)["text"] != "one more" {
		t.Fatalf("worker's second message: %v", ms)
	}

	pa, wa := planner.audit(), worker.audit()
	for _, c := range []struct {
		es                   []audit.Entry
		action, decision, op string
		who                  string
	}{
		{pa, "mesh:send:worker", "allow", "mesh_send", "planner"},
		{wa, "mesh:receive:planner", "allow", "mesh_knock", "worker"},
		{wa, "mesh:receive:planner", "allow", "mesh_receive", "worker"},
		{wa, "mesh:send:planner", "allow", "mesh_send", "worker"},
		{pa, "mesh:receive:worker", "allow", "mesh_receive", "planner"},
	} {
		e := findEntry(c.es, c.action, c.decision, c.op)
		if e == nil {
			t.Fatalf("%s's audit has no %s %s (%s)", c.who, c.action, c.decision, c.op)
		}
		if c.op != "mesh_knock" && e.PayloadSHA256 == "" {
			t.Fatalf("%s %s carries no payload hash", c.who, c.action)
		}
	}
	knocks := 0
	for _, e := range wa {
		if e.Attrs["op"] == "mesh_knock" {
			knocks++
		}
	}
	if knocks != 1 {
		t.Fatalf("worker audited %d KNOCKs, want 1", knocks)
	}
	// The relay's journal saw every frame; none holds the text.
	raw, err := os.ReadFile(filepath.Join(m.dir, "relay.journal"))
	if err != nil || len(raw) == 0 {
		t.Fatalf("relay journal: %d bytes, %v", len(raw), err)
	}
	for _, s := range []string{"plaintext must never", "LGTM", "one more"} {
		if bytes.Contains(raw, []byte(s)) {
			t.Fatalf("the relay stored %q in clear", s)
		}
	}
	for _, r := range []*meshRouter{planner, worker} {
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		if rep, err := audit.Verify(r.cfg.Audit.Dir, audit.VerifyOptions{}); err != nil || !rep.OK() {
			t.Fatalf("%s audit verify: %+v %v", r.name, rep, err)
		}
	}
}

// TestMeshRefusals: an unpaired router is refused at the KNOCK, a policy
// that denies mesh:send refuses before anything leaves, and a revocation
// cuts a live session at once, on both the send and the receive side.
func TestMeshRefusals(t *testing.T) {
	m := startMeshNet(t)
	planner := startMeshRouter(t, m, "planner", meshGov)
	worker := startMeshRouter(t, m, "worker", meshGov)
	stranger := startMeshRouter(t, m, "stranger", meshGov)
	planner.pair(peerOf("worker", worker.did))
	worker.pair(peerOf("planner", planner.did))
	// The stranger names planner, but planner names no stranger.
	stranger.pair(peerOf("planner", planner.did))

	code, out := stranger.agent("POST", bridge.SendPath, map[string]any{"to": "planner", "text": "let me in"})
	e, _ := out["error"].(map[string]any)
	if code != 403 || e["rule"] != policy.RuleKnock || !strings.Contains(fmt.Sprint(e["message"]), "not paired") {
		t.Fatalf("stranger's send: %d %v", code, out)
	}
	if findEntry(planner.audit(), "mesh:receive:"+policy.UnpairedPeer, "deny", "mesh_knock") == nil {
		t.Fatal("planner did not audit the unpaired KNOCK")
	}
	if findEntry(stranger.audit(), "mesh:send:planner", "deny", "mesh_knock") == nil {
		t.Fatal("the stranger's audit does not say its message was not sent")
	}
	// A name no pairing gives.
	code, out = planner.agent("POST", bridge.SendPath, map[string]any{"to": "nobody", "text": "hi"})
	if e, _ := out["error"].(map[string]any); code != 403 || e["rule"] != policy.RulePairing {
		t.Fatalf("send to an unpaired name: %d %v", code, out)
	}

	// A live session, then revocation on planner's side.
	code, out = planner.agent("POST", bridge.SendPath, map[string]any{"to": "worker", "text": "before"})
	if code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	if ms := inbox(t, worker, 20); len(ms) != 1 {
		t.Fatalf("worker got %v", ms)
	}
	start := time.Now()
	planner.pair() // revoked
	code, out = planner.agent("POST", bridge.SendPath, map[string]any{"to": "worker", "text": "after"})
	if e, _ := out["error"].(map[string]any); code != 403 || e["rule"] != policy.RulePairing {
		t.Fatalf("send after revocation: %d %v", code, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("revocation took %s", d)
	}
	var st bridge.Status
	planner.admin("GET", bridge.AdminStatusPath, nil, &st)
	if len(st.Peers) != 0 {
		t.Fatalf("planner still lists %v", st.Peers)
	}
	// Worker still holds its end; what it sends is refused and never
	// delivered.
	code, out = worker.agent("POST", bridge.SendPath, map[string]any{"to": "planner", "text": "are you there"})
	if code != 200 {
		t.Fatalf("worker's send on its old session: %d %v", code, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for findEntry(planner.audit(), "mesh:receive:"+policy.UnpairedPeer, "deny", "mesh_receive") == nil {
		if time.Now().After(deadline) {
			t.Fatal("planner did not audit the refused message")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ms := inbox(t, planner, 0); len(ms) != 0 {
		t.Fatalf("a revoked peer's message was delivered: %v", ms)
	}

	// Governance that denies sending.
	strict := &governance.Policy{Name: "no-mesh", Rules: []governance.Rule{
		{Name: "inference", Effect: governance.EffectAllow, Actions: []string{"inference:*"}},
		{Name: "no-send", Effect: governance.EffectDeny, Actions: []string{"mesh:send:*"}},
	}}
	mute := startMeshRouter(t, m, "mute", strict)
	mute.pair(peerOf("worker", worker.did))
	code, out = mute.agent("POST", bridge.SendPath, map[string]any{"to": "worker", "text": "hi"})
	if e, _ := out["error"].(map[string]any); code != 403 || e["code"] != "kars_policy_denied" || e["rule"] != "no-send" {
		t.Fatalf("denied send: %d %v", code, out)
	}
	if findEntry(mute.audit(), "mesh:send:worker", "deny", "mesh_send") == nil {
		t.Fatal("the denial is not audited")
	}
}

// TestMeshSecurityEvents drives a router with a hand-held peer (the Go
// client, as a toolkit SDK would): a session started without a KNOCK, a
// tampered ciphertext inside a live session and a message outside any
// session are each dropped and raise a security event — audit entry,
// metric, trust penalty — and none reaches the agent.
func TestMeshSecurityEvents(t *testing.T) {
	m := startMeshNet(t)
	// A threshold under the initial score (500), so that a KNOCK still
	// passes after the first penalty (50).
	worker := startMeshRouter(t, m, "worker", meshGov, func(c *routerconfig.Config) { c.Mesh.TrustThreshold = 400 })
	ctx := context.Background()
	id, _ := identity.New(rand.Reader)
	mc := &client.Client{Registry: m.url, Relay: m.relayURL(), ID: id}
	if _, err := mc.Register(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
	keys, _ := x3dh.NewKeys(rand.Reader, id, time.Now())
	if err := mc.UploadPrekeys(ctx, keys); err != nil {
		t.Fatal(err)
	}
	conn, err := mc.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	worker.pair(peerOf("mallory", id.DID()))

	send := func(f *wire.Frame) {
		t.Helper()
		if err := conn.Send(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	open := func() *session.Session {
		b, err := mc.FetchBundle(ctx, worker.did)
		if err != nil {
			t.Fatal(err)
		}
		s, err := session.Initiate(rand.Reader, id, worker.did, b)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	awaitEvent := func(kind string, n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			c := 0
			for _, e := range worker.audit() {
				if e.Rule == policy.RuleSecurity && e.Attrs["kind"] == kind && e.Action == "mesh:receive:mallory" {
					c++
				}
			}
			if c == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d security events of kind %s, want %d", c, kind, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// 1. A session without a KNOCK.
	s := open()
	f, _ := s.Seal([]byte("no knock"), "m1", time.Now())
	send(f)
	awaitEvent("unsolicited_session", 1)

	// 2. KNOCK properly, then tamper inside the session.
	priv := ed25519Priv(id)
	k := &wire.Frame{V: 1, Type: wire.TypeKnock, From: id.DID(), To: worker.did, ID: "k1", TS: time.Now().UTC().Format(time.RFC3339Nano),
		Intent: &wire.Intent{Action: "mesh:session"}}
	wire.SignFrame(k, priv)
	send(k)
	select {
	case in := <-conn.Recv():
		if in.Frame == nil || in.Frame.Type != wire.TypeKnockAccept || in.Frame.KnockID != "k1" {
			t.Fatalf("KNOCK answer: %+v", in)
		}
		if err := wire.VerifyFrame(in.Raw, mustKey(t, mc, worker.did)); err != nil {
			t.Fatalf("the accept is not signed by the worker: %v", err)
		}
		conn.Ack(in.ID)
	case <-time.After(10 * time.Second):
		t.Fatal("no KNOCK answer")
	}
	s = open()
	f, _ = s.Seal([]byte("hello after knocking"), "m2", time.Now())
	send(f)
	if ms := inbox(t, worker, 10); len(ms) != 1 || ms[0].(map[string]any)["text"] != "hello after knocking" {
		t.Fatalf("worker's inbox: %v", ms)
	}
	f, _ = s.Seal([]byte("tampered"), "m3", time.Now())
	f.Ciphertext = flipLast(f.Ciphertext)
	send(f)
	awaitEvent("decrypt", 1)

	// 3. A message outside any session, from a second identity's
	// session the worker never accepted: no x3dh, nothing to decrypt.
	other, _ := identity.New(rand.Reader)
	b, _ := mc.FetchBundle(ctx, worker.did)
	s2, _ := session.Initiate(rand.Reader, other, worker.did, b)
	f, _ = s2.Seal([]byte("stray"), "m4", time.Now())
	f.From, f.X3DH = id.DID(), nil
	// Mallory's live session fails on it as well: a decrypt event.
	send(f)
	awaitEvent("decrypt", 2)

	if ms := inbox(t, worker, 0); len(ms) != 0 {
		t.Fatalf("a dropped frame reached the agent: %v", ms)
	}
	code, out := worker.agent("GET", bridge.TrustPath, nil)
	peers, _ := out["peers"].([]any)
	if code != 200 || len(peers) != 1 {
		t.Fatalf("trust: %d %v", code, out)
	}
	p := peers[0].(map[string]any)
	// Three penalties (50 each) and one success (+5) from 500: 355,
	// under the threshold of 400.
	if p["score"].(float64) != 500-3*50+5 || p["meetsThreshold"] != false {
		t.Fatalf("mallory's trust after three security events: %v", p)
	}
	resp, err := http.Get("http://" + worker.addrs["admin"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`kars_router_mesh_security_events_total{kind="decrypt"} 2`, `kars_router_mesh_security_events_total{kind="unsolicited_session"} 1`} {
		if !strings.Contains(string(mb), want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
	// Below the threshold now: even a correct message is refused.
	f, _ = s.Seal([]byte("trust me"), "m5", time.Now())
	send(f)
	deadline := time.Now().Add(10 * time.Second)
	for findEntry(worker.audit(), "mesh:receive:mallory", "deny", "mesh_receive") == nil {
		if time.Now().After(deadline) {
			t.Fatal("a peer below the threshold was not refused")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustKey(t *testing.T, c *client.Client, did string) []byte {
	t.Helper()
	k, err := c.PublicKey(context.Background(), did)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// flipLast flips a bit in the last byte of a base64url ciphertext (the
// AEAD tag).
func flipLast(s string) string {
	b, err := wire.DecodeB64(s)
	if err != nil {
		panic(err)
	}
	b[len(b)-1] ^= 1
	return wire.B64(b)
}

func ed25519Priv(id *identity.Identity) ed25519.PrivateKey { return ed25519.NewKeyFromSeed(id.Seed()) }

// TestMeshSurvivesRestart: the identity, the session and the pushed
// policy live in the router's state directory. A message sent while the
// receiving router is down waits at the relay and is delivered, on the
// same session (no second KNOCK), after it restarts.
func TestMeshSurvivesRestart(t *testing.T) {
	m := startMeshNet(t)
	planner := startMeshRouter(t, m, "planner", meshGov)
	worker := startMeshRouter(t, m, "worker", meshGov)
	planner.pair(peerOf("worker", worker.did))
	worker.pair(peerOf("planner", planner.did))
	if code, out := planner.agent("POST", bridge.SendPath, map[string]any{"to": "worker", "text": "first"}); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	if ms := inbox(t, worker, 20); len(ms) != 1 {
		t.Fatalf("%v", ms)
	}
	did := worker.did
	if err := worker.stop(); err != nil {
		t.Fatal(err)
	}
	if code, out := planner.agent("POST", bridge.SendPath, map[string]any{"to": "worker", "text": "while you were away"}); code != 200 {
		t.Fatalf("send to a stopped router: %d %v", code, out)
	}
	worker.start()
	if worker.did != did {
		t.Fatalf("the restarted router is %s, was %s", worker.did, did)
	}
	ms := inbox(t, worker, 20)
	if len(ms) != 1 || ms[0].(map[string]any)["text"] != "while you were away" {
		t.Fatalf("after the restart: %v", ms)
	}
	// The reply rides the restored session.
	if code, out := worker.agent("POST", bridge.SendPath, map[string]any{"to": "planner", "text": "back"}); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	if ms := inbox(t, planner, 20); len(ms) != 1 || ms[0].(map[string]any)["text"] != "back" {
		t.Fatalf("planner: %v", ms)
	}
	knocks := 0
	for _, e := range worker.audit() {
		if e.Attrs["op"] == "mesh_knock" {
			knocks++
		}
	}
	if knocks != 1 {
		t.Fatalf("%d KNOCKs, want the first only", knocks)
	}
}

// TestMeshRedeem: `kars mesh auth` asks the router to redeem a token; the
// router signs the redemption with its mesh identity (the CLI never holds
// it) and presents it at the registry the token names, which verifies the
// token's signature and the proof.
func TestMeshRedeem(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	var redeemed []string
	m := startMeshNet(t, func(_ context.Context, r pairing.Redemption) (*pairing.Result, error) {
		p, err := pairing.Verify(r.Token, pub, time.Now())
		if err != nil {
			return nil, err
		}
		if _, err := r.Check(time.Now()); err != nil {
			return nil, err
		}
		if len(redeemed) > 0 {
			return nil, pairing.ErrAlreadyRedeemed
		}
		redeemed = append(redeemed, r.DID)
		return &pairing.Result{Pairing: "kars-planner/b-worker", Name: p.Name, Issuer: p.Issuer, Registry: p.Registry, Relay: p.Relay}, nil
	})
	worker := startMeshRouter(t, m, "worker", meshGov)
	tok, err := pairing.Mint(rand.Reader, key, pairing.Payload{Name: "b-worker", Issuer: "did:mesh:00112233445566778899aabbccddeeff",
		Registry: m.url, Relay: m.relayURL(), Slots: 1, Exp: time.Now().Add(time.Hour).Unix(), Capabilities: []string{"handoff"}})
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		DID    string
		Result pairing.Result
	}
	if code := worker.admin("POST", bridge.AdminRedeemPath, map[string]string{"token": tok}, &out); code != 200 {
		t.Fatalf("redeem: %d %+v", code, out)
	}
	if out.DID != worker.did || out.Result.Issuer != "did:mesh:00112233445566778899aabbccddeeff" || len(redeemed) != 1 || redeemed[0] != worker.did {
		t.Fatalf("redeemed %v, answer %+v", redeemed, out)
	}
	var e map[string]any
	if code := worker.admin("POST", bridge.AdminRedeemPath, map[string]string{"token": tok}, &e); code != 502 ||
		!strings.Contains(fmt.Sprint(e), "409") {
		t.Fatalf("second redemption: %d %v", code, e)
	}
	forged := tok[:len(tok)-4] + "AAAA"
	if code := worker.admin("POST", bridge.AdminRedeemPath, map[string]string{"token": forged}, &e); code != 502 ||
		!strings.Contains(fmt.Sprint(e), "403") {
		t.Fatalf("forged token: %d %v", code, e)
	}
}

// TestAgentsTalkThroughRouters: two kars-agents, each behind its own
// router. `kars connect planner -m "@worker review this"` reaches worker's
// agent, which answers with its own model (the offline model here); the
// answer comes back as planner's reply. Both ends decided the tool and the
// mesh actions.
func TestAgentsTalkThroughRouters(t *testing.T) {
	gov := &governance.Policy{Name: "agents", Rules: []governance.Rule{
		{Name: "inference", Effect: governance.EffectAllow, Actions: []string{"inference:*"}},
		{Name: "mesh", Effect: governance.EffectAllow, Actions: []string{"tool:send_to_agent", "mesh:*"}},
	}}
	m := startMeshNet(t)
	planner := startMeshRouter(t, m, "planner", gov)
	worker := startMeshRouter(t, m, "worker", gov)
	planner.pair(peerOf("worker", worker.did))
	worker.pair(peerOf("planner", planner.did))
	newAgent := func(r *meshRouter) *agent.Agent {
		a, err := agent.New(agent.Config{Sandbox: r.name, Namespace: "kars-" + r.name, RouterURL: "http://" + r.addrs["agent"],
			Model: "kars-offline", Workspace: t.TempDir(), Instructions: "be brief"})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	pa, wa := newAgent(planner), newAgent(worker)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go wa.ServeMesh(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)))

	turn, err := pa.Chat(ctx, "default", "@worker review this")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(turn.Reply, "@worker: [kars-offline]") || !strings.Contains(turn.Reply, "Message from @planner: review this") {
		t.Fatalf("planner's reply: %q", turn.Reply)
	}
	if len(turn.ToolCalls) != 1 || turn.ToolCalls[0].Name != agent.SendToAgentTool || turn.ToolCalls[0].Decision != "allow" {
		t.Fatalf("tool calls %+v", turn.ToolCalls)
	}
	if findEntry(planner.audit(), "tool:send_to_agent", "allow", "") == nil || findEntry(planner.audit(), "mesh:send:worker", "allow", "mesh_send") == nil ||
		findEntry(worker.audit(), "mesh:receive:planner", "allow", "mesh_receive") == nil || findEntry(worker.audit(), "inference:chat:kars-offline", "allow", "") == nil {
		t.Fatal("a decision is missing from the audit logs")
	}
	// Worker's answer was decided as a send on its side.
	if findEntry(worker.audit(), "mesh:send:planner", "allow", "mesh_send") == nil {
		t.Fatal("worker's reply is not on its record")
	}
}
