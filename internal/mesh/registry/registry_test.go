package registry

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/mesh/x3dh"
	"github.com/kars-io/kars/internal/ratelimit"
)

func server(t *testing.T) *httptest.Server {
	t.Helper()
	st, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(st, Options{}))
	t.Cleanup(func() { srv.Close(); st.Close() })
	return srv
}

func post(t *testing.T, srv *httptest.Server, method, path string, body any, auth string) int {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, srv.URL+path, bytes.NewReader(b))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRegistrationProofs(t *testing.T) {
	srv := server(t)
	id, _ := identity.New(rand.Reader)
	pk := wire.B64(id.PublicKey())
	ts := time.Now().UTC().Format(time.RFC3339Nano)

	// Toolkit shape with a proof by another key: refused.
	other, _ := identity.New(rand.Reader)
	bad := map[string]any{"public_key": pk, "proof": wire.B64(other.Sign([]byte(pk + ts))), "proof_timestamp": ts}
	if c := post(t, srv, "POST", "/v1/agents", bad, ""); c != http.StatusUnauthorized {
		t.Errorf("foreign proof: %d", c)
	}
	// No proof at all.
	if c := post(t, srv, "POST", "/v1/agents", map[string]any{"public_key": pk}, ""); c != http.StatusUnauthorized {
		t.Errorf("no proof: %d", c)
	}
	// Spec shape: the header signed by the key in the body.
	if c := post(t, srv, "POST", "/v1/agents", map[string]any{"public_key": pk, "did": identity.AgentMeshDID(id.PublicKey())}, wire.AuthHeader(id, time.Now())); c != http.StatusCreated {
		t.Fatalf("spec-shaped registration: %d", c)
	}
	// Toolkit shape, good proof, same key again: conflict.
	good := map[string]any{"public_key": pk, "proof": wire.B64(id.Sign([]byte(pk + ts))), "proof_timestamp": ts}
	if c := post(t, srv, "POST", "/v1/agents", good, ""); c != http.StatusConflict {
		t.Errorf("second registration: %d", c)
	}
	// A second agent in the toolkit's shape, and a replay of its proof.
	id2, _ := identity.New(rand.Reader)
	pk2 := wire.B64(id2.PublicKey())
	p2 := map[string]any{"public_key": pk2, "proof": wire.B64(id2.Sign([]byte(pk2 + ts))), "proof_timestamp": ts}
	if c := post(t, srv, "POST", "/v1/agents", p2, ""); c != http.StatusCreated {
		t.Fatalf("toolkit-shaped registration: %d", c)
	}
}

func TestPrekeyUploadChecks(t *testing.T) {
	srv := server(t)
	id, _ := identity.New(rand.Reader)
	pk := wire.B64(id.PublicKey())
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	post(t, srv, "POST", "/v1/agents", map[string]any{"public_key": pk, "proof": wire.B64(id.Sign([]byte(pk + ts))), "proof_timestamp": ts}, "")
	keys, _ := x3dh.NewKeys(rand.Reader, id, time.Now())
	path := "/v1/agents/" + id.DID() + "/prekeys"

	mallory, _ := identity.New(rand.Reader)
	spliced := wire.UploadFor(keys)
	spliced.IdentityKey = wire.B64(mallory.X25519().PublicKey().Bytes())
	if c := post(t, srv, "PUT", path, spliced, wire.AuthHeader(id, time.Now())); c != http.StatusBadRequest {
		t.Errorf("spliced identity key: %d", c)
	}
	forged := wire.UploadFor(keys)
	forged.SignedPreKey.Signature = wire.B64(mallory.Sign([]byte("x")))
	if c := post(t, srv, "PUT", path, forged, wire.AuthHeader(id, time.Now())); c != http.StatusBadRequest {
		t.Errorf("forged prekey signature: %d", c)
	}
	// Someone else's authorization cannot upload for id.
	post(t, srv, "POST", "/v1/agents", map[string]any{"public_key": wire.B64(mallory.PublicKey()), "proof": wire.B64(mallory.Sign([]byte(wire.B64(mallory.PublicKey()) + ts))), "proof_timestamp": ts}, "")
	if c := post(t, srv, "PUT", path, wire.UploadFor(keys), wire.AuthHeader(mallory, time.Now())); c != http.StatusForbidden {
		t.Errorf("upload under another agent's authorization: %d", c)
	}
	if c := post(t, srv, "PUT", path, wire.UploadFor(keys), wire.AuthHeader(id, time.Now())); c != http.StatusOK {
		t.Fatalf("genuine upload: %d", c)
	}
	// Bundle fetches need a registered caller.
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	if resp, _ := http.DefaultClient.Do(req); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous fetch: %d", resp.StatusCode)
	}
}

func TestRegistrationRate(t *testing.T) {
	st, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv := httptest.NewServer(New(st, Options{Registrations: ratelimit.Limit{Events: 2, Per: time.Hour}}))
	defer srv.Close()
	codes := []int{}
	for range 3 {
		id, _ := identity.New(rand.Reader)
		pk := wire.B64(id.PublicKey())
		ts := time.Now().UTC().Format(time.RFC3339Nano)
		codes = append(codes, post(t, srv, "POST", "/v1/agents", map[string]any{"public_key": pk, "proof": wire.B64(id.Sign([]byte(pk + ts))), "proof_timestamp": ts}, ""))
	}
	if codes[0] != http.StatusCreated || codes[1] != http.StatusCreated || codes[2] != http.StatusTooManyRequests {
		t.Fatalf("codes %v, want 201 201 429", codes)
	}
}
