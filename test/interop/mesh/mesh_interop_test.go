// Package mesh tests kars' AgentMesh implementation against the Agent
// Governance Toolkit's own (PyPI agent-governance-toolkit-core 5.0.0,
// module agentmesh), installed by setup.sh: its X3DH and Double Ratchet
// check our published vectors and hold conversations with our sessions,
// in both directions, through our registry and relay and through its
// own. The tests skip when the toolkit is not installed, unless
// KARS_REQUIRE_INTEROP=1 (CI), where they fail.
package mesh

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/client"
	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/registry"
	"github.com/kars-io/kars/internal/mesh/relay"
	"github.com/kars-io/kars/internal/mesh/session"
	"github.com/kars-io/kars/internal/mesh/x3dh"
)

const python = ".venv/bin/python"

func requireToolkit(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("interop tests start Python processes; skipped under -short")
	}
	if _, err := os.Stat(python); err != nil {
		if os.Getenv("KARS_REQUIRE_INTEROP") == "1" {
			t.Fatalf("the toolkit is not installed (%v): run test/interop/mesh/setup.sh", err)
		}
		t.Skip("the toolkit is not installed: run test/interop/mesh/setup.sh")
	}
}

// driver is one toolkit agent in a Python process (driver.py).
type driver struct {
	t   *testing.T
	cmd *exec.Cmd
	in  *json.Encoder
	out *bufio.Scanner
	did string
}

func startDriver(t *testing.T) *driver {
	t.Helper()
	cmd := exec.Command(python, "-W", "ignore", "driver.py")
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	d := &driver{t: t, cmd: cmd, in: json.NewEncoder(stdin), out: bufio.NewScanner(stdout)}
	d.out.Buffer(make([]byte, 1<<20), 1<<20)
	d.did = d.call("whoami", nil)["did"].(string)
	return d
}

func (d *driver) call(op string, args map[string]any) map[string]any {
	d.t.Helper()
	if args == nil {
		args = map[string]any{}
	}
	args["op"] = op
	if err := d.in.Encode(args); err != nil {
		d.t.Fatal(err)
	}
	if !d.out.Scan() {
		d.t.Fatalf("driver %s: no answer (%v)", op, d.out.Err())
	}
	var res map[string]any
	if err := json.Unmarshal(d.out.Bytes(), &res); err != nil {
		d.t.Fatalf("driver %s: %s", op, d.out.Bytes())
	}
	if res["ok"] != true {
		d.t.Fatalf("toolkit agent: %s: %v", op, res["error"])
	}
	return res
}

// goAgent is a kars agent: our client, x3dh keys and sessions.
type goAgent struct {
	t        *testing.T
	c        *client.Client
	keys     *x3dh.Keys
	conn     *client.Conn
	sessions map[string]*session.Session
}

func newGoAgent(t *testing.T, registryURL, relayURL string, noReceipts bool) *goAgent {
	t.Helper()
	id, _ := identity.New(rand.Reader)
	a := &goAgent{t: t, c: &client.Client{Registry: registryURL, Relay: relayURL, ID: id, NoReceipts: noReceipts}, sessions: map[string]*session.Session{}}
	ctx := context.Background()
	if _, err := a.c.Register(ctx, []string{"interop"}, nil); err != nil {
		t.Fatal(err)
	}
	var err error
	if a.keys, err = x3dh.NewKeys(rand.Reader, id, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := a.c.UploadPrekeys(ctx, a.keys); err != nil {
		t.Fatal(err)
	}
	if a.conn, err = a.c.Dial(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.conn.Close() })
	return a
}

func (a *goAgent) send(peer, text, id string) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := a.sessions[peer]
	if s == nil {
		b, err := a.c.FetchBundle(ctx, peer)
		if err != nil {
			a.t.Fatal(err)
		}
		if s, err = session.Initiate(rand.Reader, a.c.ID, peer, b); err != nil {
			a.t.Fatal(err)
		}
		a.sessions[peer] = s
	}
	f, err := s.Seal([]byte(text), id, time.Now())
	if err != nil {
		a.t.Fatal(err)
	}
	if err := a.conn.Send(ctx, f); err != nil {
		a.t.Fatal(err)
	}
}

// recv decrypts the next message; peerKey is how the sender's Ed25519
// key is learned (nil: from the frame's identity_key_ed).
func (a *goAgent) recv(peerKey func(did string) []byte) (from, text string) {
	a.t.Helper()
	var in client.Inbound
	select {
	case in = <-a.conn.Recv():
	case <-time.After(10 * time.Second):
		a.t.Fatal("no frame within 10 s")
	}
	f := in.Frame
	s := a.sessions[f.From]
	var pt []byte
	var err error
	if s == nil {
		s, pt, err = session.Accept(rand.Reader, a.keys, f, peerKey(f.From))
		a.sessions[f.From] = s
	} else {
		pt, err = s.Open(f)
	}
	if err != nil {
		a.t.Fatalf("decrypting %s from %s: %v", f.ID, f.From, err)
	}
	a.conn.Ack(f.ID)
	return f.From, string(pt)
}

func TestToolkitVerifiesPublishedVectors(t *testing.T) {
	requireToolkit(t)
	d := startDriver(t)
	path, _ := filepath.Abs("../../../internal/mesh/session/testdata/vectors-v1.json")
	res := d.call("vectors", map[string]any{"path": path})
	if res["frames_checked"].(float64) != 6 {
		t.Fatalf("toolkit checked %v frames", res["frames_checked"])
	}
}

// conversation runs both directions between a toolkit agent and a kars
// agent: the toolkit initiates to kars, then a second kars agent
// initiates to the toolkit.
func conversation(t *testing.T, d *driver, g, g2 *goAgent, registryURL string, peerKey func(string) []byte) {
	// Toolkit → kars: its X3DH against our bundle, its ratchet, our Accept.
	d.call("initiate", map[string]any{"registry": registryURL, "peer": g.c.ID.DID()})
	for i := range 3 {
		d.call("send", map[string]any{"peer": g.c.ID.DID(), "text": fmt.Sprint("from toolkit ", i), "msg_id": fmt.Sprint("t", i)})
	}
	for i := range 3 {
		from, text := g.recv(peerKey)
		if from != d.did || text != fmt.Sprint("from toolkit ", i) {
			t.Fatalf("kars got %q from %s", text, from)
		}
	}
	// Replies ratchet both sides several times.
	for turn := range 3 {
		g.send(d.did, fmt.Sprint("kars reply ", turn), fmt.Sprint("g", turn))
		res := d.call("recv", map[string]any{"timeout": 10})
		if res["text"] != fmt.Sprint("kars reply ", turn) {
			t.Fatalf("toolkit got %v", res)
		}
		d.call("send", map[string]any{"peer": g.c.ID.DID(), "text": fmt.Sprint("toolkit again ", turn), "msg_id": fmt.Sprint("ta", turn)})
		if _, text := g.recv(peerKey); text != fmt.Sprint("toolkit again ", turn) {
			t.Fatalf("kars got %q", text)
		}
	}
	// kars → toolkit: our X3DH against its bundle, its create_receiver.
	g2.send(d.did, "hello from kars", "k0")
	g2.send(d.did, "second from kars", "k1")
	for _, want := range []string{"hello from kars", "second from kars"} {
		if res := d.call("recv", map[string]any{"timeout": 10}); res["text"] != want || res["from"] != g2.c.ID.DID() {
			t.Fatalf("toolkit got %v, want %q", res, want)
		}
	}
	d.call("send", map[string]any{"peer": g2.c.ID.DID(), "text": "toolkit answers", "msg_id": "t-answer"})
	if _, text := g2.recv(peerKey); text != "toolkit answers" {
		t.Fatalf("kars got %q", text)
	}
}

// The toolkit's agent as a client of kars-mesh: our registry and relay.
func TestToolkitAgentOnKarsMesh(t *testing.T) {
	requireToolkit(t)
	dir := t.TempDir()
	store, err := registry.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	inbox, err := relay.OpenInbox(dir, relay.Quotas{PerRecipientMessages: 1000, PerRecipientBytes: 1 << 20, TotalBytes: 1 << 24})
	if err != nil {
		t.Fatal(err)
	}
	defer inbox.Close()
	rel := relay.New(inbox, relay.Options{Directory: store, RequireRegistered: true})
	defer rel.Close()
	mux := http.NewServeMux()
	mux.Handle("/ws", rel)
	mux.Handle("/", registry.New(store, registry.Options{}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	wsURL := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"

	d := startDriver(t)
	d.call("register", map[string]any{"registry": srv.URL})
	d.call("upload", map[string]any{"registry": srv.URL})
	d.call("connect", map[string]any{"relay": wsURL})
	g := newGoAgent(t, srv.URL, wsURL, false)
	g2 := newGoAgent(t, srv.URL, wsURL, false)
	// Our registry serves public keys: the responder checks the
	// toolkit initiator's X25519 identity key against its registered key.
	keyFromRegistry := func(did string) []byte {
		k, err := g.c.PublicKey(context.Background(), did)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	conversation(t, d, g, g2, srv.URL, keyFromRegistry)
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startToolkitServer runs `python -m agentmesh.<module>` on a free port.
func startToolkitServer(t *testing.T, module string) string {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(python, "-W", "ignore", "-m", "agentmesh."+module, "--port", fmt.Sprint(port), "--log-level", "warning")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	for range 200 {
		if resp, err := http.Get(base + "/health"); err == nil {
			resp.Body.Close()
			return base
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("toolkit %s did not come up on %s", module, base)
	return ""
}

// kars agents as clients of the toolkit's own registry and relay.
func TestKarsAgentOnToolkitMesh(t *testing.T) {
	requireToolkit(t)
	reg := startToolkitServer(t, "registry")
	rel := startToolkitServer(t, "relay")
	wsURL := "ws" + strings.TrimPrefix(rel, "http") + "/ws"

	d := startDriver(t)
	d.call("register", map[string]any{"registry": reg})
	d.call("upload", map[string]any{"registry": reg})
	d.call("connect", map[string]any{"relay": wsURL})
	// The toolkit's relay sends no receipts.
	g := newGoAgent(t, reg, wsURL, true)
	g2 := newGoAgent(t, reg, wsURL, true)
	// The toolkit's registry does not serve public keys, and its frames
	// carry no identity_key_ed: the responder learns the initiator's key
	// from the initiator's own bundle (identity_key_ed, signed-prekey
	// checked), which costs that agent one one-time prekey.
	keyFromBundle := func(did string) []byte {
		b, err := g.c.FetchBundle(context.Background(), did)
		if err != nil {
			t.Fatal(err)
		}
		return b.IdentityKeyEd
	}
	conversation(t, d, g, g2, reg, keyFromBundle)
}
