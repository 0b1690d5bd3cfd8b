package offloadplugin

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/mesh/policy"
	meshserver "github.com/kars-io/kars/internal/mesh/server"
	"github.com/kars-io/kars/internal/offload"
	"github.com/kars-io/kars/internal/pairing"
	"github.com/kars-io/kars/internal/trust"
)

type allowAll struct{}

func (allowAll) Decide(string) governance.Decision {
	return governance.Decision{Verdict: governance.Allow}
}
func (allowAll) Audit(context.Context, audit.Record) error { return nil }
func (allowAll) AuditFailing() bool                        { return false }

type toolResult struct {
	Text    string         `json:"text"`
	Details map[string]any `json:"details"`
	IsError bool           `json:"isError"`
}

func tool(t *testing.T, dir string, env []string, name string, params any) toolResult {
	t.Helper()
	raw, _ := json.Marshal(params)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, Node(t), "test/drive.ts", name, string(raw))
	cmd.Dir = PluginDir(t)
	cmd.Env = append(append(os.Environ(), "KARS_MESH_STATE_DIR="+dir, "KARS_PAIRING_TOKEN="), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, stderr.String())
	}
	var r toolResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%s printed %q", name, out)
	}
	return r
}

// broker is a stand-in for the controller's offload broker: a real mesh
// bridge (the one kars routers and the broker run) answering status
// requests.
type broker struct {
	br      *bridge.Bridge
	cancel  context.CancelFunc
	done    chan struct{}
	answers atomic.Int64
}

func startBroker(t *testing.T, dir, reg, rel string, peer *policy.Peer) *broker {
	t.Helper()
	ts, err := trust.Open("", trust.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	br, err := bridge.Open(bridge.Options{Dir: dir, Registry: reg, Relay: rel, Self: []string{"kars-offload-broker"},
		Threshold: trust.DefaultConfig().Threshold, Gov: allowAll{}, Trust: ts, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if peer != nil {
		if err := br.SetPolicy(&policy.Policy{Peers: []policy.Peer{*peer}}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &broker{br: br, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(b.done); br.Run(ctx) }()
	go func() {
		for ctx.Err() == nil {
			for _, m := range br.Take(ctx, 8, time.Second) {
				req, err := offload.ParseRequest([]byte(m.Text))
				if err != nil || req.Op != offload.OpStatus {
					continue
				}
				ans, _ := json.Marshal(offload.Answer(req.ID, offload.Message{Pairing: &offload.Usage{Name: m.From, Capabilities: []string{"offload"}, Slots: 3}}))
				if _, err := br.Send(ctx, bridge.SendRequest{To: m.From, Text: string(ans), InReplyTo: m.ID}); err == nil {
					b.answers.Add(1)
				}
			}
		}
	}()
	for !br.Connected() {
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(b.stop)
	return b
}

func (b *broker) stop() {
	b.cancel()
	<-b.done
	b.br.Close()
}

// TestPluginHostAgainstMesh runs the plugin's tools against a real
// kars-mesh (registry, relay, pairing redemption) on loopback and a real
// mesh bridge as the broker, without kars dev: pairing, a reused token
// refused by the server, a status request answered over KNOCK + X3DH +
// the ratchet (twice, the session kept between processes), and what
// happens when the broker loses its session state.
func TestPluginHostAgainstMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the plugin in eight Node processes")
	}
	Node(t)
	var redeemed atomic.Pointer[string]
	var brokerDID, regURL, relURL string
	expires := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	srv, err := meshserver.Open(meshserver.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Redeem: func(_ context.Context, r pairing.Redemption) (*pairing.Result, error) {
			if _, err := r.Check(time.Now()); err != nil {
				return nil, err
			}
			if !redeemed.CompareAndSwap(nil, &r.DID) {
				return nil, pairing.ErrAlreadyRedeemed
			}
			return &pairing.Result{Pairing: "kars-system/alice-laptop", Name: "alice-laptop", Issuer: brokerDID, Registry: regURL, Relay: relURL,
				ExpiresAt: expires, Capabilities: []string{"offload"}}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	regURL, relURL = hs.URL, "ws"+strings.TrimPrefix(hs.URL, "http")+"/ws"

	brokerDir := t.TempDir()
	b := startBroker(t, brokerDir, regURL, relURL, nil)
	brokerDID = b.br.DID()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	tok, err := pairing.Mint(rand.Reader, key, pairing.Payload{Name: "alice-laptop", Issuer: brokerDID, Registry: regURL, Relay: relURL,
		Slots: 3, Exp: expires.Unix(), Capabilities: []string{"offload"}})
	if err != nil {
		t.Fatal(err)
	}

	host := t.TempDir()
	if r := tool(t, host, []string{"KARS_PAIRING_TOKEN=" + tok}, "kars_pair", map[string]any{}); r.IsError {
		t.Fatalf("kars_pair: %+v", r)
	}
	hostDID := *redeemed.Load()
	peer := policy.Peer{Name: "alice-laptop", DID: hostDID, Pairing: "kars-system/alice-laptop", Capabilities: []string{"offload"}, ExpiresAt: expires}
	if err := b.br.SetPolicy(&policy.Policy{Peers: []policy.Peer{peer}}); err != nil {
		t.Fatal(err)
	}
	if r := tool(t, t.TempDir(), nil, "kars_pair", map[string]any{"token": tok}); !r.IsError || r.Details["code"] != "token_used" {
		t.Fatalf("a reused token: %+v", r)
	}

	fast := []string{"KARS_MESH_ANSWER_TIMEOUT_MS=4000"}
	r := tool(t, host, fast, "kars_offload_status", map[string]any{})
	if r.IsError || !strings.Contains(r.Text, "Pairing alice-laptop: 0/3 slots") {
		t.Fatalf("status: %+v", r)
	}
	// A second call reuses the session (no new KNOCK): the ratchet state
	// was persisted between the two processes.
	if r := tool(t, host, fast, "kars_offload_status", map[string]any{}); r.IsError {
		t.Fatalf("second status: %+v", r)
	}

	// The broker loses its journal (same identity): the host's next
	// request cannot be decrypted and gets no answer, and the plugin resets
	// its session. The broker counts the undecryptable message as a
	// security event and lowers the host's trust score below its threshold,
	// so the fresh KNOCK is refused: the plugin says why.
	b.stop()
	fresh := t.TempDir()
	seed, _ := os.ReadFile(filepath.Join(brokerDir, "identity.seed"))
	os.WriteFile(filepath.Join(fresh, "identity.seed"), seed, 0o600)
	b2 := startBroker(t, fresh, regURL, relURL, &peer)
	if b2.br.DID() != brokerDID {
		t.Fatal("the restarted broker has another identity")
	}
	r = tool(t, host, fast, "kars_offload_status", map[string]any{})
	if !r.IsError || !strings.Contains(r.Text, "session with it was reset") {
		t.Fatalf("status to a broker without the session: %+v", r)
	}
	r = tool(t, host, fast, "kars_offload_status", map[string]any{})
	if !r.IsError || r.Details["code"] != "knock_rejected" || !strings.Contains(r.Text, "trust score") || b2.answers.Load() != 0 {
		t.Fatalf("status after the reset: %+v (answers %d)", r, b2.answers.Load())
	}
}
