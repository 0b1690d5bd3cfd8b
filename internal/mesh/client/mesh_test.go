package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/registry"
	"github.com/kars-io/kars/internal/mesh/relay"
	"github.com/kars-io/kars/internal/mesh/session"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/mesh/x3dh"
)

// tap records every byte a listener's connections carry, both ways.
type tap struct {
	net.Listener
	mu  sync.Mutex
	buf bytes.Buffer
}

func (t *tap) Accept() (net.Conn, error) {
	c, err := t.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &tapConn{Conn: c, t: t}, nil
}

func (t *tap) bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.buf.Bytes())
}

type tapConn struct {
	net.Conn
	t *tap
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.t.mu.Lock()
	c.t.buf.Write(p[:n])
	c.t.mu.Unlock()
	return n, err
}

func (c *tapConn) Write(p []byte) (int, error) {
	c.t.mu.Lock()
	c.t.buf.Write(p)
	c.t.mu.Unlock()
	return c.Conn.Write(p)
}

// mesh is a kars-mesh on loopback: registry and relay on one server.
type mesh struct {
	dir   string
	srv   *httptest.Server
	tap   *tap
	store *registry.Store
	inbox *relay.Inbox
	relay *relay.Relay
}

func startMesh(t *testing.T, dir string, maxMsgs int) *mesh {
	return startMeshAt(t, dir, maxMsgs, "127.0.0.1:0")
}

// startMeshAt serves on addr, so a restarted mesh can come back where
// its clients expect it.
func startMeshAt(t *testing.T, dir string, maxMsgs int, addr string) *mesh {
	t.Helper()
	m := &mesh{dir: dir}
	var err error
	if m.store, err = registry.OpenStore(dir); err != nil {
		t.Fatal(err)
	}
	if m.inbox, err = relay.OpenInbox(dir, relay.Quotas{PerRecipientMessages: maxMsgs, PerRecipientBytes: 64 << 20, TotalBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	m.relay = relay.New(m.inbox, relay.Options{Directory: m.store, RequireRegistered: true})
	mux := http.NewServeMux()
	mux.Handle("/ws", m.relay)
	mux.Handle("/", registry.New(m.store, registry.Options{}))
	m.srv = httptest.NewUnstartedServer(mux)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	m.srv.Listener.Close()
	m.tap = &tap{Listener: ln}
	m.srv.Listener = m.tap
	m.srv.Start()
	t.Cleanup(m.stop)
	return m
}

func (m *mesh) stop() {
	if m.srv == nil {
		return
	}
	m.relay.Close()
	m.srv.CloseClientConnections()
	m.srv.Close()
	m.inbox.Close()
	m.store.Close()
	m.srv = nil
}

type agent struct {
	c    *Client
	keys *x3dh.Keys
	conn *Conn
}

func newAgent(t *testing.T, m *mesh) *agent {
	t.Helper()
	id, _ := identity.New(rand.Reader)
	c := &Client{Registry: m.srv.URL, Relay: "ws" + strings.TrimPrefix(m.srv.URL, "http") + "/ws", ID: id}
	ctx := context.Background()
	if did, err := c.Register(ctx, []string{"review"}, nil); err != nil || did != id.DID() {
		t.Fatalf("register: %q %v", did, err)
	}
	keys, err := x3dh.NewKeys(rand.Reader, id, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.UploadPrekeys(ctx, keys); err != nil {
		t.Fatal(err)
	}
	return &agent{c: c, keys: keys}
}

func (a *agent) dial(t *testing.T) {
	t.Helper()
	conn, err := a.c.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	a.conn = conn
	t.Cleanup(func() { conn.Close() })
}

func recv(t *testing.T, a *agent) Inbound {
	t.Helper()
	select {
	case in := <-a.conn.Recv():
		return in
	case <-time.After(5 * time.Second):
		t.Fatal("no frame delivered within 5 s")
	}
	return Inbound{}
}

const secret = "the launch code is 0000-SWORDFISH"

func TestEndToEnd(t *testing.T) {
	m := startMesh(t, t.TempDir(), 1000)
	alice, bob := newAgent(t, m), newAgent(t, m)
	alice.dial(t)
	bob.dial(t)
	ctx := context.Background()

	b, err := alice.c.FetchBundle(ctx, bob.c.ID.DID())
	if err != nil {
		t.Fatal(err)
	}
	if b.OneTimePreKey == nil {
		t.Fatal("bundle without a one-time prekey while bob has ten")
	}
	sa, err := session.Initiate(rand.Reader, alice.c.ID, bob.c.ID.DID(), b)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := sa.Seal([]byte(secret), "m-1", time.Now())
	if err := alice.conn.Send(ctx, f); err != nil {
		t.Fatal(err)
	}
	in := recv(t, bob)
	peerKey, err := bob.c.PublicKey(ctx, in.Frame.From)
	if err != nil {
		t.Fatal(err)
	}
	sb, pt, err := session.Accept(rand.Reader, bob.keys, in.Frame, peerKey)
	if err != nil || string(pt) != secret {
		t.Fatalf("accept: %q %v", pt, err)
	}
	bob.conn.Ack(in.Frame.ID)
	r, _ := sb.Seal([]byte("roger: "+secret), "r-1", time.Now())
	if err := bob.conn.Send(ctx, r); err != nil {
		t.Fatal(err)
	}
	in = recv(t, alice)
	if pt, err := sa.Open(in.Frame); err != nil || string(pt) != "roger: "+secret {
		t.Fatalf("reply: %q %v", pt, err)
	}
	alice.conn.Ack(in.Frame.ID)

	// The relay's disk and every byte on the wire hold ciphertext only.
	waitFor(t, func() bool { n, _ := m.inbox.Queued(alice.c.ID.DID()); return n == 0 })
	disk, _ := os.ReadFile(filepath.Join(m.dir, "relay.journal"))
	for name, b := range map[string][]byte{"journal": disk, "traffic": m.tap.bytes()} {
		if len(b) == 0 {
			t.Fatalf("%s is empty: the scan would prove nothing", name)
		}
		for _, needle := range []string{secret, "SWORDFISH", "launch code"} {
			if bytes.Contains(b, []byte(needle)) {
				t.Errorf("%s contains the plaintext %q", name, needle)
			}
		}
	}
	if !bytes.Contains(m.tap.bytes(), []byte(`"type":"message"`)) {
		t.Fatal("the traffic tap saw no message frame")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached within 5 s")
}

func TestOneTimePreKeysHandedOutOnce(t *testing.T) {
	m := startMesh(t, t.TempDir(), 1000)
	bob := newAgent(t, m)
	fetchers := make([]*agent, 4)
	for i := range fetchers {
		fetchers[i] = newAgent(t, m)
	}
	var mu sync.Mutex
	seen := map[uint32]bool{}
	noOPK := 0
	var wg sync.WaitGroup
	for _, f := range fetchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				b, err := f.c.FetchBundle(context.Background(), bob.c.ID.DID())
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if b.OneTimePreKey == nil {
					noOPK++
				} else if seen[b.OneTimePreKey.ID] {
					t.Errorf("one-time prekey %d handed out twice", b.OneTimePreKey.ID)
				} else {
					seen[b.OneTimePreKey.ID] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != x3dh.OneTimeTarget || noOPK != 16-x3dh.OneTimeTarget {
		t.Fatalf("%d distinct OPKs and %d bundles without, want %d and %d", len(seen), noOPK, x3dh.OneTimeTarget, 16-x3dh.OneTimeTarget)
	}
	// Consumption survives a restart: none of them comes back.
	dir := m.dir
	m.stop()
	m2 := startMesh(t, dir, 1000)
	f := fetchers[0]
	f.c.Registry = m2.srv.URL
	b, err := f.c.FetchBundle(context.Background(), bob.c.ID.DID())
	if err != nil || b.OneTimePreKey != nil {
		t.Fatalf("after restart: %v, opk %v", err, b.OneTimePreKey)
	}
	// Without an OPK the session is 3-DH and still works.
	sa, err := session.Initiate(rand.Reader, f.c.ID, bob.c.ID.DID(), b)
	if err != nil {
		t.Fatal(err)
	}
	fr, _ := sa.Seal([]byte("3dh"), "x", time.Now())
	if _, pt, err := session.Accept(rand.Reader, bob.keys, fr, f.c.ID.PublicKey()); err != nil || string(pt) != "3dh" {
		t.Fatalf("3-DH session: %v", err)
	}
}

// A restart of the mesh loses no unacknowledged frame: bob is offline,
// alice's frames are confirmed stored, the mesh restarts, bob connects
// and gets them all, in order.
func TestDurableAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	m := startMesh(t, dir, 1000)
	alice, bob := newAgent(t, m), newAgent(t, m)
	alice.dial(t)
	ctx := context.Background()
	for i := range 20 {
		f := &wire.Frame{V: 1, Type: wire.TypeMessage, From: alice.c.ID.DID(), To: bob.c.ID.DID(), ID: fmt.Sprint("m", i),
			Header: &wire.MessageHeader{DH: wire.B64(make([]byte, 32)), N: uint32(i)}, Ciphertext: wire.B64(make([]byte, 40))}
		if err := alice.conn.Send(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	alice.conn.Close()
	m.stop()

	m2 := startMesh(t, dir, 1000)
	bob.c.Registry = m2.srv.URL
	bob.c.Relay = "ws" + strings.TrimPrefix(m2.srv.URL, "http") + "/ws"
	bob.dial(t)
	for i := range 20 {
		in := recv(t, bob)
		if in.Frame.ID != fmt.Sprint("m", i) {
			t.Fatalf("frame %d is %s", i, in.Frame.ID)
		}
		if i < 10 {
			bob.conn.Ack(in.Frame.ID)
		}
	}
	waitFor(t, func() bool { n, _ := m2.inbox.Queued(bob.c.ID.DID()); return n == 10 })
	// Reconnecting redelivers exactly the unacknowledged half.
	bob.conn.Close()
	bob.dial(t)
	for i := 10; i < 20; i++ {
		if in := recv(t, bob); in.Frame.ID != fmt.Sprint("m", i) {
			t.Fatalf("redelivery %d is %s", i, in.Frame.ID)
		}
	}
}

func TestRelayRefusals(t *testing.T) {
	m := startMesh(t, t.TempDir(), 3)
	alice, bob := newAgent(t, m), newAgent(t, m)
	alice.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msg := func(id, from string) *wire.Frame {
		return &wire.Frame{V: 1, Type: wire.TypeMessage, From: from, To: bob.c.ID.DID(), ID: id,
			Header: &wire.MessageHeader{DH: wire.B64(make([]byte, 32))}, Ciphertext: wire.B64(make([]byte, 40))}
	}
	// Claiming another agent's DID.
	if err := alice.conn.Send(ctx, msg("forged", bob.c.ID.DID())); err == nil || !strings.Contains(err.Error(), "from does not match") {
		t.Errorf("forged from: %v", err)
	}
	// Mail for an agent nobody registered.
	nobody, _ := identity.New(rand.Reader)
	stray := msg("stray", alice.c.ID.DID())
	stray.To = nobody.DID()
	if err := alice.conn.Send(ctx, stray); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("unregistered recipient: %v", err)
	}
	// The per-recipient quota (3 here).
	for i := range 3 {
		if err := alice.conn.Send(ctx, msg(fmt.Sprint("q", i), alice.c.ID.DID())); err != nil {
			t.Fatal(err)
		}
	}
	if err := alice.conn.Send(ctx, msg("q3", alice.c.ID.DID())); err == nil || !strings.Contains(err.Error(), "inbox is full") {
		t.Errorf("over quota: %v", err)
	}
	// A duplicate id is stored once.
	if err := alice.conn.Send(ctx, msg("q0", alice.c.ID.DID())); err != nil {
		t.Errorf("duplicate: %v", err)
	}
	if n, _ := m.inbox.Queued(bob.c.ID.DID()); n != 3 {
		t.Errorf("%d queued, want 3", n)
	}
	// The relay forwards envelopes; a payload that does not parse reaches
	// the recipient flagged, with its id to ack, not silently dropped.
	bob.dial(t)
	for range 3 {
		bob.conn.Ack(recv(t, bob).ID)
	}
	waitFor(t, func() bool { n, _ := m.inbox.Queued(bob.c.ID.DID()); return n == 0 })
	junk := msg("junk", alice.c.ID.DID())
	junk.Ciphertext = "!!not base64!!"
	raw, _ := junk.Marshal()
	if err := alice.conn.Send(ctx, &wire.Frame{V: 1, Type: wire.TypeMessage, From: junk.From, To: junk.To, ID: "junk", Header: junk.Header, Ciphertext: junk.Ciphertext}); err != nil {
		t.Fatalf("relaying a bad payload: %v (%s)", err, raw)
	}
	in := recv(t, bob)
	if in.Err == nil || in.Frame != nil || in.ID != "junk" {
		t.Fatalf("bad payload delivered as %+v", in)
	}
	// An unregistered agent cannot connect.
	stranger, _ := identity.New(rand.Reader)
	sc := &Client{Registry: m.srv.URL, Relay: alice.c.Relay, ID: stranger}
	conn, err := sc.Dial(ctx)
	if err == nil {
		select {
		case <-conn.done:
		case <-time.After(2 * time.Second):
		}
		if m.relay.Connected(stranger.DID()) {
			t.Error("an unregistered agent is connected")
		}
		conn.Close()
	}
}

func TestRegistryAuth(t *testing.T) {
	m := startMesh(t, t.TempDir(), 10)
	alice, bob := newAgent(t, m), newAgent(t, m)
	ctx := context.Background()
	// bob cannot replace alice's prekeys or deregister her.
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, m.srv.URL+"/v1/agents/"+alice.c.ID.DID(), nil)
	req.Header.Set("Authorization", wire.AuthHeader(bob.c.ID, time.Now()))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-agent delete: %v %v", err, resp.Status)
	}
	// A replayed header is refused.
	h := wire.AuthHeader(alice.c.ID, time.Now())
	for i, want := range []int{http.StatusOK, http.StatusUnauthorized} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.srv.URL+"/v1/agents/"+bob.c.ID.DID()+"/prekeys", nil)
		req.Header.Set("Authorization", h)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != want {
			t.Errorf("use %d of one header: %v %d, want %d", i+1, err, resp.StatusCode, want)
		}
	}
	// A stale header is refused.
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, m.srv.URL+"/v1/agents/"+bob.c.ID.DID()+"/prekeys", nil)
	req.Header.Set("Authorization", wire.AuthHeader(alice.c.ID, time.Now().Add(-6*time.Minute)))
	if resp, _ := http.DefaultClient.Do(req); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("stale header: %d", resp.StatusCode)
	}
	// The did:agentmesh: alias names the same agent.
	if _, err := alice.c.PublicKey(ctx, identity.AgentMeshDID(bob.c.ID.PublicKey())); err != nil {
		t.Errorf("alias lookup: %v", err)
	}
	if err := alice.c.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	var se *StatusError
	if _, err := bob.c.PublicKey(ctx, alice.c.ID.DID()); !errors.As(err, &se) || se.Status != http.StatusNotFound {
		t.Errorf("after deregistering: %v", err)
	}
}

// The client rides out a relay restart: a frame sent while the relay is
// down is re-sent after the client reconnects by itself, and the
// recipient, reconnected too, receives it.
func TestReconnect(t *testing.T) {
	dir := t.TempDir()
	m := startMesh(t, dir, 1000)
	addr := m.tap.Addr().String()
	alice, bob := newAgent(t, m), newAgent(t, m)
	alice.dial(t)
	bob.dial(t)
	m.stop()

	sent := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		f := &wire.Frame{V: 1, Type: wire.TypeMessage, From: alice.c.ID.DID(), To: bob.c.ID.DID(), ID: "while-down",
			Header: &wire.MessageHeader{DH: wire.B64(make([]byte, 32))}, Ciphertext: wire.B64(make([]byte, 40))}
		sent <- alice.conn.Send(ctx, f)
	}()
	time.Sleep(300 * time.Millisecond)
	m2 := startMeshAt(t, dir, 1000, addr)
	if err := <-sent; err != nil {
		t.Fatalf("send across the restart: %v", err)
	}
	select {
	case in := <-bob.conn.Recv():
		if in.Frame.ID != "while-down" {
			t.Fatalf("got %s", in.Frame.ID)
		}
	case <-time.After(20 * time.Second):
		n, _ := m2.inbox.Queued(bob.c.ID.DID())
		t.Fatalf("bob did not reconnect and receive within 20 s (connected %v, queued %d, client err %v)", m2.relay.Connected(bob.c.ID.DID()), n, bob.conn.err)
	}
}
